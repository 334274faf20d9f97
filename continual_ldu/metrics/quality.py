"""No-reference image quality of the attacker's generations: BRISQUE, CLIP-IQA, CLIP-IQAC, SDS
and LIQE. A protection that works makes the personalized model generate worse images, so a
worse quality score protects more (BRISQUE higher, the others lower).

Every class takes ``compute(generations, reference)`` with (N, 3, H, W) [0, 1] generations; the
reference set is not used. BRISQUE's model ships in the ``brisque`` package. The CLIP metrics
read ``metrics.clip_weights`` (an OpenAI-format checkpoint file, loaded by open_clip, or a
transformers ``CLIPModel`` directory with its tokenizer files); LIQE reads
``metrics.liqe_weights``. Prompt scores follow MetaCloak's evaluation (Liu et al. 2024): the
softmax of 100 x cosine similarity over a positive and a negative prompt.
"""

from __future__ import annotations

import functools
import warnings
from itertools import product
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from continual_ldu.metrics.base import (
    Metric,
    MetricResult,
    check_images,
    summarize,
    to_uint8_hwc,
    weights_file,
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PROMPT_LOGIT_SCALE = 100.0  # CLIP's trained logit scale, as CLIP-IQA and MetaCloak use it


LIBSVM_EPSILON_SVR, LIBSVM_RBF = 3, 2


def _brisque_class():
    """``brisque.BRISQUE`` with two shims, both in our code, none in site-packages.

    1. brisque 0.2 keeps some features as 1-element arrays (``mean_squares_sum`` divides by a
       shape tuple) and then calls ``float()`` on them, which numpy >= 2.4 refuses ("only
       0-dimensional arrays can be converted to Python scalars"). Each feature is flattened
       with ``.item()``: the same numbers on every numpy.
    2. The wheel's libsvm predicts with an OpenMP ``reduction(+)`` over support vectors, whose
       summation order varies from run to run (scores differ in the 13th digit). The same
       epsilon-SVR with the RBF kernel, sum_i coef_i exp(-gamma ||x - sv_i||^2) - rho, is
       evaluated in numpy from the loaded model's support vectors instead: deterministic.
    """
    with warnings.catch_warnings():  # scipy.ndimage.filters is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        from brisque import BRISQUE

    class DeterministicBRISQUE(BRISQUE):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            param = self.model.param
            if (param.svm_type, param.kernel_type) != (LIBSVM_EPSILON_SVR, LIBSVM_RBF):
                raise ValueError("BRISQUE's model is expected to be an epsilon-SVR, RBF kernel")
            vectors = self.model.get_SV()
            width = max(max(v) for v in vectors)
            self._sv = np.zeros((len(vectors), width))
            for row, vector in enumerate(vectors):
                for index, value in vector.items():
                    if index > 0:  # libsvm indices start at 1; -1 ends a vector
                        self._sv[row, index - 1] = value
            self._coef = np.array([c[0] for c in self.model.get_sv_coef()], dtype=np.float64)
            self._rho, self._gamma = float(self.model.rho[0]), float(param.gamma)

        def calculate_brisque_features(self, image, kernel_size=7, sigma=7 / 6):
            features = super().calculate_brisque_features(image, kernel_size, sigma)
            return np.array([np.asarray(f, dtype=np.float64).item() for f in features])

        def calculate_image_quality_score(self, brisque_features):
            x = np.zeros(self._sv.shape[1])
            scaled = self.scale_features(brisque_features)
            x[: len(scaled)] = scaled
            kernel = np.exp(-self._gamma * ((self._sv - x) ** 2).sum(1))
            return float(self._coef @ kernel - self._rho)

    return DeterministicBRISQUE


class BRISQUE(Metric):
    """BRISQUE (Mittal et al. 2012) of each generation; higher (worse quality) protects more.

    Roughly 0 (pristine) to 100 (heavily distorted); mean over generations (spread: std).
    Source: the ``brisque`` package's LIVE-trained SVR, its RGB -> grey conversion and features,
    with a numpy >= 2.4 shim and a deterministic SVR evaluation (``_brisque_class``). Weights:
    shipped in the package.
    """

    name = "brisque"
    kind = "protection"
    higher_is_better = True

    def __init__(self, cfg=None, device="cpu") -> None:
        super().__init__(cfg, device)
        self._model = None

    def _compute(
        self, generations: torch.Tensor, reference: torch.Tensor | None = None
    ) -> MetricResult:
        generations = check_images(generations, "generations")
        if self._model is None:
            self._model = _brisque_class()(url=False)
        return summarize([float(self._model.score(im)) for im in to_uint8_hwc(generations)])


class ClipModel:
    """A CLIP image and text encoder from a local path; nothing is downloaded.

    A file is an OpenAI-format checkpoint (JIT archive or state dict, e.g. ``ViT-B-32.pt`` or
    LIQE's ``LIQE.pt``) built by ``open_clip.load_openai_model`` and tokenized by open_clip's
    bundled BPE; a directory is a transformers ``CLIPModel`` with its ``CLIPTokenizer`` files.
    Images are resized (short side, bicubic, antialiased) to the model's input size,
    centre-cropped and normalised with OpenAI's CLIP mean and std.
    """

    def __init__(self, path: Path, device: torch.device) -> None:
        self.device = device
        if path.is_dir():
            from transformers import CLIPModel, CLIPTokenizer

            self.backend = "transformers"
            self.model = CLIPModel.from_pretrained(str(path), local_files_only=True)
            self.tokenizer = CLIPTokenizer.from_pretrained(str(path), local_files_only=True)
            self.image_size = int(self.model.config.vision_config.image_size)
        else:
            import open_clip

            self.backend = "open_clip"
            self.model = open_clip.load_openai_model(str(path), precision="fp32", device="cpu")
            size = self.model.visual.image_size
            self.image_size = int(size[0] if isinstance(size, tuple | list) else size)
            self.context_length = int(self.model.context_length)
        self.model = self.model.eval().requires_grad_(False).to(device)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp())

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(CLIP_MEAN, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=pixels.device).view(1, 3, 1, 1)
        return (pixels - mean) / std

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> the model's normalised square input."""
        height, width = images.shape[-2:]
        scale = self.image_size / min(height, width)
        size = (
            max(self.image_size, round(height * scale)),
            max(self.image_size, round(width * scale)),
        )
        resized = F.interpolate(images, size=size, mode="bicubic", antialias=True).clamp(0, 1)
        top, left = (size[0] - self.image_size) // 2, (size[1] - self.image_size) // 2
        crop = resized[..., top : top + self.image_size, left : left + self.image_size]
        return self.normalize(crop)

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings of already-normalised model inputs."""
        pixels = pixels.to(self.device)
        if self.backend == "open_clip":
            features = self.model.encode_image(pixels)
        else:
            features = self.model.get_image_features(pixel_values=pixels)
            features = features if torch.is_tensor(features) else features.pooler_output
        return F.normalize(features.float(), dim=-1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_pixels(self.preprocess(images.to(self.device)))

    @torch.no_grad()
    def encode_texts(self, prompts: list[str]) -> torch.Tensor:
        """Unit-norm text embeddings."""
        if self.backend == "open_clip":
            import open_clip

            tokens = open_clip.tokenize(prompts, context_length=self.context_length)
            features = self.model.encode_text(tokens.to(self.device))
        else:
            batch = self.tokenizer(prompts, padding=True, return_tensors="pt").to(self.device)
            features = self.model.get_text_features(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            )
            features = features if torch.is_tensor(features) else features.pooler_output
        return F.normalize(features.float(), dim=-1)


@functools.lru_cache(maxsize=2)
def load_clip(path: str, device: str) -> ClipModel:
    """One loaded CLIP per (path, device), shared by the CLIP-IQA, CLIP-IQAC and SDS metrics."""
    return ClipModel(Path(path), torch.device(device))


class PromptPairMetric(Metric):
    """A CLIP antonym-prompt score: softmax(100 cos) over (positive, negative) prompts."""

    kind = "protection"
    weights_key = "clip_weights"
    higher_is_better = False

    def prompts(self) -> tuple[str, str]:
        raise NotImplementedError

    def score(self, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        """Per-image score from the two prompt probabilities (default: positive minus negative)."""
        return positive - negative

    def _compute(
        self, generations: torch.Tensor, reference: torch.Tensor | None = None
    ) -> MetricResult:
        generations = check_images(generations, "generations")
        path = weights_file(self.weights_path, self.weights_key)
        clip = load_clip(str(path), str(self.device))
        texts = clip.encode_texts(list(self.prompts()))
        probs = (PROMPT_LOGIT_SCALE * clip.encode_images(generations) @ texts.T).softmax(-1)
        return summarize(self.score(probs[:, 0], probs[:, 1]))


class CLIPIQA(PromptPairMetric):
    """CLIP-IQA (Wang et al. 2023): P("Good photo.") against "Bad photo." in [0, 1]; lower
    (worse quality) protects more.

    The antonym-prompt score with a stock CLIP, as torchmetrics' ``clip_image_quality_assessment``
    with ``prompts=("quality",)`` and an OpenAI CLIP (not piq's CLIP variant without positional
    embeddings). Weights: ``metrics.clip_weights``.
    """

    name = "clip_iqa"

    def prompts(self) -> tuple[str, str]:
        return ("Good photo.", "Bad photo.")

    def score(self, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        return positive


class CLIPIQAC(PromptPairMetric):
    """CLIP-IQAC (MetaCloak): P("a good photo of <subject>") - P("a bad photo of <subject>") in
    [-1, 1]; lower protects more. ``metrics.subject`` defaults to "face". Weights:
    ``metrics.clip_weights``.
    """

    name = "clip_iqac"

    def prompts(self) -> tuple[str, str]:
        return (f"a good photo of {self.cfg.subject}", f"a bad photo of {self.cfg.subject}")


class SDS(PromptPairMetric):
    """Subject detection score (MetaCloak's CLIP zero-shot form): P("a picture of <subject>") -
    P("a picture of non-<subject>") in [-1, 1]; lower (the subject is not recognisably there)
    protects more. MetaCloak's face variant, the mean detector confidence, is
    ``fdfr``'s ``extra["mean_score"]``. Weights: ``metrics.clip_weights``.
    """

    name = "sds"

    def prompts(self) -> tuple[str, str]:
        return (f"a picture of {self.cfg.subject}", f"a picture of non-{self.cfg.subject}")


# LIQE's prompt vocabulary (Zhang et al. 2023, github.com/zwx8981/LIQE, LIQE.py)
LIQE_QUALITIES = ("bad", "poor", "fair", "good", "perfect")
LIQE_SCENES = (
    "animal",
    "cityscape",
    "human",
    "indoor",
    "landscape",
    "night",
    "plant",
    "still_life",
    "others",
)
LIQE_DISTORTIONS = (
    "jpeg2000 compression",
    "jpeg compression",
    "noise",
    "blur",
    "color",
    "contrast",
    "overexposure",
    "underexposure",
    "spatial",
    "quantization",
    "other",
)
LIQE_PATCH_STRIDE = 32
LIQE_NUM_PATCHES = 15


class LIQE(Metric):
    """LIQE (Zhang et al. 2023), the expected quality level in [1, 5]; lower protects more.

    CLIP ViT-B/32 fine-tuned on joint prompts "a photo of a(n) {scene} with {distortion}
    artifacts, which is of {quality} quality" (5 x 9 x 11). Each image is cut into model-sized
    crops at stride 32 (images smaller than the crop are first upscaled), 15 evenly spaced crops
    are scored, their logits averaged, and the softmax marginalised to the five quality levels,
    weighted 1..5. ``extra["human_scene"]`` is the fraction of images whose likeliest scene is
    "human" (MetaCloak's LIQE scene score). Weights: ``metrics.liqe_weights`` (LIQE.pt, an
    OpenAI-format CLIP state dict).
    """

    name = "liqe"
    kind = "protection"
    weights_key = "liqe_weights"
    higher_is_better = False

    def __init__(self, cfg=None, device="cpu") -> None:
        super().__init__(cfg, device)
        self._clip: ClipModel | None = None
        self._texts: torch.Tensor | None = None

    def _load(self) -> ClipModel:
        if self._clip is None:
            path = weights_file(self.weights_path, self.weights_key)
            if path.is_dir():
                raise ValueError("metrics.liqe_weights must be LIQE's checkpoint file (LIQE.pt)")
            self._clip = ClipModel(path, self.device)
            prompts = [
                f"a photo of a {s} with {d} artifacts, which is of {q} quality"
                for q, s, d in product(LIQE_QUALITIES, LIQE_SCENES, LIQE_DISTORTIONS)
            ]
            self._texts = self._clip.encode_texts(prompts)
        return self._clip

    def crops(self, image: torch.Tensor, size: int) -> torch.Tensor:
        """(K, 3, size, size) evenly spaced crops of one normalised (3, H, W) image."""
        height, width = image.shape[-2:]
        if min(height, width) < size:
            scale = size / min(height, width)
            new = (max(size, round(height * scale)), max(size, round(width * scale)))
            image = F.interpolate(image[None], size=new, mode="bicubic", antialias=True)[0]
        patches = image.unfold(1, size, LIQE_PATCH_STRIDE).unfold(2, size, LIQE_PATCH_STRIDE)
        patches = patches.permute(1, 2, 0, 3, 4).reshape(-1, 3, size, size)
        if len(patches) > LIQE_NUM_PATCHES:
            step = len(patches) // LIQE_NUM_PATCHES
            patches = patches[torch.arange(LIQE_NUM_PATCHES) * step]
        return patches

    def _compute(
        self, generations: torch.Tensor, reference: torch.Tensor | None = None
    ) -> MetricResult:
        generations = check_images(generations, "generations")
        clip = self._load()
        levels = torch.arange(1, len(LIQE_QUALITIES) + 1, dtype=torch.float32)
        qualities, human = [], 0
        for image in clip.normalize(generations.to(self.device)):
            features = clip.encode_pixels(self.crops(image, clip.image_size))
            logits = (clip.logit_scale * features @ self._texts.T).mean(0)
            probs = logits.softmax(-1).view(
                len(LIQE_QUALITIES), len(LIQE_SCENES), len(LIQE_DISTORTIONS)
            )
            qualities.append(float(probs.sum((1, 2)).cpu() @ levels))
            human += int(probs.sum((0, 2)).argmax()) == LIQE_SCENES.index("human")
        return summarize(qualities, human_scene=human / len(qualities))
