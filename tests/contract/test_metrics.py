"""Contract tests for the metric catalog (``continual_ldu.metrics.METRICS``).

One table (``CASES``) drives every catalog entry through the same contract: it runs on small
inputs and gives a finite value within its documented range (or, without its weights, a skip
with the reason and no number), deterministically; fidelity metrics give their identity value
on identical images. Metrics with weights run here on small, seeded, randomly initialised
weights written in the real formats (AlexNet and Inception state dicts, an ArcFace-shaped ONNX
model, OpenAI-format and transformers CLIPs), so the real loading code runs. Behaviour tests
use real photos shipped by scikit-image and matplotlib with the real shipped models (dlib,
RetinaFace, MTCNN, BRISQUE).
"""

from __future__ import annotations

import io
import math
import subprocess
import sys
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from continual_ldu.metrics import METRICS, MetricResult, MetricsConfig, build_metrics
from continual_ldu.metrics.base import KINDS, weights_keys
from continual_ldu.metrics.faces import make_detector, similarity_transform
from continual_ldu.metrics.fidelity import frechet_distance
from continual_ldu.metrics.intrinsic import heldout_attacker_loss
from continual_ldu.personalizers import PersonalizerConfig, build_personalizer
from continual_ldu.seeding import make_generator

INF = math.inf
FACE_SIZE = 256  # px: dlib's HOG (one upsampling) still finds the astronaut's ~48 px face
PAIR_SIZE = 96  # px for the fidelity pair: MS-SSIM runs 3 scales, SSIM's 11 px window fits


@dataclass(frozen=True)
class Case:
    """One catalog entry's row: its documented range and, for fidelity, the identity value."""

    bounds: tuple[float, float] = (-INF, INF)
    identity: float | None = None


# Every key of METRICS needs a row.
CASES: dict[str, Case] = {
    "psnr": Case(bounds=(0, INF), identity=INF),
    "ssim": Case(bounds=(-1, 1), identity=1.0),
    "ms_ssim": Case(bounds=(0, 1), identity=1.0),
    "lpips": Case(bounds=(0, INF), identity=0.0),
    "fid": Case(bounds=(0, INF), identity=0.0),
    "fid_generations": Case(bounds=(0, INF)),
    "ism": Case(bounds=(-1, 1)),
    "ism_arcface": Case(bounds=(-1, 1)),
    "fdfr": Case(bounds=(0, 1)),
    "brisque": Case(),
    "clip_iqa": Case(bounds=(0, 1)),
    "clip_iqac": Case(bounds=(-1, 1)),
    "sds": Case(bounds=(-1, 1)),
    "liqe": Case(bounds=(1, 5)),
    "heldout_loss": Case(bounds=(0, INF)),
    "ism_synth": Case(bounds=(-1, 1)),
    "fdfr_synth": Case(bounds=(0, 1)),
}


def case(name: str) -> Case:
    if name not in CASES:
        pytest.fail(f"METRICS[{name!r}] has no row in CASES: add one to test its contract")
    return CASES[name]


# ----------------------------------------------------------------------------- real photos


@cache
def photo(name: str) -> np.ndarray:
    """A real RGB photo: the astronaut (Eileen Collins), Grace Hopper, or a cat (Chelsea)."""
    import skimage.data

    if name == "astronaut":
        return skimage.data.astronaut()
    if name == "cat":
        return skimage.data.chelsea()
    if name == "grace":
        import matplotlib.cbook

        path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
        return np.asarray(Image.open(path).convert("RGB"))[44:556]  # 600x512 -> square
    if name == "astronaut_jpeg":
        buffer = io.BytesIO()
        Image.fromarray(photo("astronaut")).save(buffer, "JPEG", quality=75)
        return np.asarray(Image.open(buffer).convert("RGB"))
    raise KeyError(name)


def batch(*names: str, size: int = FACE_SIZE) -> torch.Tensor:
    """Photos resized (bicubic) to size x size as a [0, 1] (B, 3, size, size) batch."""
    arrays = [
        np.array(Image.fromarray(photo(n)).resize((size, size), Image.BICUBIC)) for n in names
    ]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


def fidelity_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """(protected, clean): two photos and a seeded +-noise copy of them."""
    clean = batch("astronaut", "grace", size=PAIR_SIZE)
    noise = torch.randn(clean.shape, generator=make_generator(0))
    return (clean + 0.03 * noise).clamp(0, 1), clean


def protection_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """(generations, reference): two people as generations, the astronaut as the identity."""
    return batch("astronaut", "grace"), batch("astronaut", "astronaut_jpeg")


# ----------------------------------------------------------------------------- weights


def _alexnet_features(path: Path) -> None:
    from torchvision.models import alexnet

    torch.manual_seed(0)
    state = {f"features.{k}": v for k, v in alexnet().features.state_dict().items()}
    torch.save(state, path)


def _fid_inception(path: Path) -> None:
    """torch-fidelity's FID Inception-v3, randomly initialised, saved as its state dict."""
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    cls = tf_inception.FeatureExtractorInceptionV3
    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as patch:  # no download, no weights to load
        patch.setattr(tf_inception, "load_state_dict_from_url", lambda *a, **k: {})
        patch.setattr(cls, "load_state_dict", lambda self, *a, **k: None)
        net = cls("inception-v3-compat", ["2048"])
    torch.save(net.state_dict(), path)


class _TinyFaceNet(torch.nn.Module):
    """ArcFace's interface at toy size: (N, 3, 112, 112) in, (N, 16) embeddings out."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 5, stride=4)  # 112 -> 27
        self.head = torch.nn.Linear(8 * 3 * 3, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.nn.functional.avg_pool2d(self.conv(x).relu(), 9)  # 27 -> 3
        return self.head(features.flatten(1))


def _arcface_onnx(path: Path) -> None:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _TinyFaceNet().eval(),
            torch.zeros(1, 3, 112, 112),
            str(path),
            dynamo=False,
            input_names=["input.1"],
            dynamic_axes={"input.1": {0: "batch"}},
        )


def _openai_clip(path: Path) -> None:
    """A tiny CLIP in OpenAI's state-dict layout (what ViT-B-32.pt and LIQE.pt hold)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    vision = CLIPVisionCfg(layers=1, width=64, patch_size=16, image_size=64)
    text = CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=1)
    torch.save(CLIP(32, vision_cfg=vision, text_cfg=text, quick_gelu=True).state_dict(), path)


def _synth_evaluators(path: Path) -> None:
    """Untrained SynthFaces evaluators in their real folder format (contract only)."""
    from continual_ldu.reference.evaluators import (
        EvaluatorConfig,
        FaceClassifier,
        IdentityNet,
        save_evaluators,
    )

    torch.manual_seed(0)
    save_evaluators(
        path, IdentityNet([8, 16, 32, 64], 32), FaceClassifier([8, 16, 32]), EvaluatorConfig.quick()
    )


WRITERS = {
    "lpips_weights": ("alexnet.pth", _alexnet_features),
    "fid_inception_weights": ("inception.pth", _fid_inception),
    "arcface_weights": ("arcface.onnx", _arcface_onnx),
    "clip_weights": ("clip.pt", _openai_clip),
    "liqe_weights": ("liqe.pt", _openai_clip),
    "synth_evaluators_weights": ("synth_evaluators", _synth_evaluators),
}


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("metric-weights")


def weights_for(key: str, folder: Path) -> str:
    """The seeded synthetic weights file for a config key, written once per session."""
    if key not in WRITERS:
        pytest.fail(f"no synthetic weights for metrics.{key}: add a writer to WRITERS")
    filename, write = WRITERS[key]
    path = folder / filename
    if not path.exists():
        write(path)
    return str(path)


def configured(name: str, folder: Path, **overrides) -> MetricsConfig:
    """A config that gives the metric its (synthetic) weights."""
    key = METRICS[name].weights_key
    fields = {key: weights_for(key, folder)} if key else {}
    return MetricsConfig(names=[name], **{**fields, **overrides})


@pytest.fixture(params=sorted(METRICS))
def name(request) -> str:
    """Each catalog key in turn."""
    return request.param


def run(name: str, cfg: MetricsConfig, request) -> MetricResult:
    """Compute a fresh instance of the metric on its kind's small inputs."""
    metric = METRICS[name](cfg)
    if metric.kind == "fidelity":
        return metric.compute(*fidelity_pair())
    if metric.kind == "protection":
        return metric.compute(*protection_inputs())
    model = request.getfixturevalue("tiny_model")
    personalizer = build_personalizer(PersonalizerConfig(name="textual_inversion"), model)
    with torch.no_grad():
        latents = model.encode(request.getfixturevalue("images32")[:2])
    return metric.compute(personalizer, latents)


# ----------------------------------------------------------------------------- the contract


def test_cases_table_covers_catalog_exactly() -> None:
    """The contract table has one row per METRICS key, and no stale rows."""
    assert set(CASES) == set(METRICS)


def test_metric_declares_kind_weights_and_direction(name: str) -> None:
    """Each class names itself, a known kind, a real config weights field, and its direction."""
    cls = METRICS[name]
    assert cls.name == name
    assert cls.kind in KINDS
    assert cls.weights_key is None or cls.weights_key in weights_keys()
    assert isinstance(cls.higher_is_better, bool)
    doc = " ".join((cls.__doc__ or "").split())
    direction = "more imperceptible" if cls.kind == "fidelity" else "protects more"
    assert direction in doc, f"{cls.__name__}'s docstring must state its direction"
    if cls.weights_key:
        assert f"metrics.{cls.weights_key}" in doc, "the docstring must name its weights field"


def test_metric_runs_to_finite_value_in_range(name: str, weights_dir: Path, request) -> None:
    """With its weights given, the metric returns a finite number within its documented range."""
    result = run(name, configured(name, weights_dir), request)
    assert isinstance(result, MetricResult)
    assert result.ok, result.skipped
    assert math.isfinite(result.value), result
    low, high = case(name).bounds
    assert low - 1e-9 <= result.value <= high + 1e-9, result
    assert result.spread is None or math.isfinite(result.spread)


def test_metric_is_deterministic(name: str, weights_dir: Path, request) -> None:
    """Two fresh instances on the same inputs return the same value."""
    cfg = configured(name, weights_dir)
    first, second = run(name, cfg, request), run(name, cfg, request)
    assert first.value == second.value
    assert first.spread == second.spread


@pytest.mark.parametrize("weighted", sorted(n for n in METRICS if METRICS[n].weights_key))
def test_metric_without_weights_is_skipped_with_reason(weighted: str) -> None:
    """LPIPS, FID, ArcFace, the CLIP metrics and LIQE without weights: a reason, never a number."""
    metric = METRICS[weighted](MetricsConfig(names=[weighted]))
    inputs = fidelity_pair() if metric.kind == "fidelity" else protection_inputs()
    result = metric.compute(*inputs)
    assert result.value is None
    assert result.skipped == f"skipped: no weights (set metrics.{metric.weights_key})"


@pytest.mark.parametrize("fidelity", sorted(n for n in METRICS if METRICS[n].kind == "fidelity"))
def test_fidelity_metric_identity_value(fidelity: str, weights_dir: Path) -> None:
    """Identical images give the identity: PSNR inf (uncapped), (MS-)SSIM 1, LPIPS and FID 0."""
    expected = case(fidelity).identity
    if expected is None:
        pytest.fail(f"CASES[{fidelity!r}] needs the metric's identity value")
    _, clean = fidelity_pair()
    result = METRICS[fidelity](configured(fidelity, weights_dir)).compute(clean.clone(), clean)
    assert result.value == pytest.approx(expected, abs=1e-6)


def test_weights_path_that_does_not_exist_fails_loudly(tmp_path: Path) -> None:
    """A configured but missing weights file raises, in validation and in compute, never skips."""
    missing = str(tmp_path / "nope.pth")
    cfg = MetricsConfig(names=["lpips"], lpips_weights=missing)
    with pytest.raises(ValueError, match="lpips_weights"):
        build_metrics(cfg)
    with pytest.raises(FileNotFoundError):
        METRICS["lpips"](cfg).compute(*fidelity_pair())


def test_build_metrics_builds_names_in_order_and_rejects_unknown() -> None:
    """build_metrics instantiates cfg.names in order; an unknown name is a config error."""
    built = build_metrics(MetricsConfig(names=["ssim", "psnr"]))
    assert [m.name for m in built] == ["ssim", "psnr"]
    with pytest.raises(ValueError, match="unknown metric 'nope'"):
        build_metrics(MetricsConfig(names=["nope"]))


def test_metric_result_skip_and_value_exclude_each_other() -> None:
    """A result holds a number or a skip reason, never both and never neither."""
    with pytest.raises(ValueError):
        MetricResult(value=1.0, skipped="skipped: no weights (set metrics.x)")
    with pytest.raises(ValueError):
        MetricResult(value=None)
    assert MetricResult.skip("skipped: why").ok is False


def test_metrics_package_import_is_cheap() -> None:
    """Importing the catalog loads none of the heavy metric libraries."""
    heavy = ["dlib", "onnxruntime", "brisque", "retinaface", "open_clip", "torchmetrics", "cv2"]
    code = (
        "import sys, continual_ldu.metrics; "
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# ----------------------------------------------------------------------------- behaviour


def test_ism_ranks_jpeg_copy_above_another_person() -> None:
    """dlib ISM: the astronaut is closer to its JPEG (q=75) copy than to Grace Hopper."""
    ism = METRICS["ism"](MetricsConfig(names=["ism"]))
    reference = batch("astronaut")
    same = ism.compute(batch("astronaut_jpeg"), reference).value
    other = ism.compute(batch("grace"), reference).value
    assert same > other + 0.05, (same, other)


def test_ism_averages_generations_with_faces_and_counts_the_rest() -> None:
    """A faceless generation is left out of the mean and counted in extra."""
    ism = METRICS["ism"](MetricsConfig(names=["ism"]))
    reference = batch("astronaut")
    alone = ism.compute(batch("astronaut_jpeg"), reference)
    mixed = ism.compute(batch("astronaut_jpeg", "cat"), reference)
    assert mixed.value == pytest.approx(alone.value)
    assert (mixed.extra["faces"], mixed.extra["no_face"]) == (1, 1)


def test_ism_without_any_face_in_generations_is_skipped() -> None:
    """Only faceless generations: no number, a reason, and the count."""
    result = METRICS["ism"](MetricsConfig(names=["ism"])).compute(batch("cat"), batch("astronaut"))
    assert result.value is None
    assert "no face" in result.skipped
    assert result.extra["no_face"] == 1


@pytest.mark.parametrize("detector", ["retinaface", "mtcnn"])
def test_fdfr_finds_faces_in_people_and_none_in_cat(detector: str) -> None:
    """The detector finds the astronaut's and Grace Hopper's faces and no face in the cat."""
    fdfr = METRICS["fdfr"](MetricsConfig(names=["fdfr"], face_detector=detector))
    people = fdfr.compute(batch("astronaut", "grace"))
    assert people.value == 0.0
    assert people.extra["mean_score"] > 0.9
    cat = fdfr.compute(batch("cat"))
    assert cat.value == 1.0
    assert cat.extra["no_face"] == 1


@pytest.mark.parametrize("detector", ["retinaface", "mtcnn"])
def test_detector_landmarks_follow_insightface_order(detector: str) -> None:
    """Landmarks: image-left eye, image-right eye, nose, mouth corners; eyes above the mouth."""
    image = np.ascontiguousarray(photo("astronaut"))
    (face,) = [f for f in make_detector(detector).detect(image) if f.area > 50 * 50]
    eyes, mouth = face.landmarks[:2], face.landmarks[3:]
    assert eyes[0, 0] < eyes[1, 0]
    assert mouth[0, 0] < mouth[1, 0]
    assert eyes[:, 1].max() < face.landmarks[2, 1] < mouth[:, 1].min()


def test_similarity_transform_recovers_known_similarity() -> None:
    """Umeyama's estimate returns the rotation, scale and shift that made the points."""
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, size=(5, 2))
    angle, scale, shift = 0.3, 1.7, np.array([5.0, -3.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = scale * src @ rotation.T + shift
    expected = np.hstack([scale * rotation, shift[:, None]])
    np.testing.assert_allclose(similarity_transform(src, dst), expected, atol=1e-9)


def test_brisque_scores_noised_astronaut_worse() -> None:
    """BRISQUE (lower is better quality) rises when heavy Gaussian noise is added."""
    brisque = METRICS["brisque"](MetricsConfig(names=["brisque"]))
    clean = batch("astronaut", size=512)
    noisy = (clean + 0.15 * torch.randn(clean.shape, generator=make_generator(0))).clamp(0, 1)
    assert brisque.compute(noisy).value > brisque.compute(clean).value + 20


def test_psnr_of_known_mse() -> None:
    """A uniform 0.1 offset is an MSE of 0.01, i.e. exactly 20 dB."""
    clean = torch.full((2, 3, 16, 16), 0.5)
    result = METRICS["psnr"]().compute(clean + 0.1, clean)
    assert result.value == pytest.approx(20.0)


def test_ms_ssim_uses_fewer_scales_on_small_images() -> None:
    """32 px images (too small for five scales) still get a finite MS-SSIM, with fewer scales."""
    protected, clean = fidelity_pair()
    small = torch.nn.functional.interpolate(clean, size=32, mode="area")
    noisy = torch.nn.functional.interpolate(protected, size=32, mode="area")
    result = METRICS["ms_ssim"]().compute(noisy, small)
    assert math.isfinite(result.value) and result.extra["scales"] < 5


def test_frechet_distance_matches_torchmetrics() -> None:
    """The small-sample nuclear-norm form equals torchmetrics' eigenvalue FID formula."""
    from torchmetrics.image.fid import _compute_fid

    gen = make_generator(0)
    real = torch.randn(12, 16, generator=gen, dtype=torch.float64)
    fake = 1.5 * torch.randn(9, 16, generator=gen, dtype=torch.float64) + 0.3
    expected = _compute_fid(real.mean(0), real.T.cov(), fake.mean(0), fake.T.cov())
    assert frechet_distance(real, fake) == pytest.approx(float(expected), rel=1e-6)


def test_clip_iqa_reads_transformers_directory(tmp_path: Path) -> None:
    """clip_weights may be a transformers CLIPModel folder with its tokenizer files."""
    from transformers import CLIPConfig, CLIPModel

    from continual_ldu.models.clip_vocab import write_clip_tokenizer_files

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "intermediate_size": 64, "vocab_size": 49408},
        vision_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "intermediate_size": 64, "image_size": 64, "patch_size": 16},
        projection_dim=16,
    )  # fmt: skip
    CLIPModel(config).save_pretrained(tmp_path)
    write_clip_tokenizer_files(tmp_path)
    metric = METRICS["clip_iqa"](MetricsConfig(names=["clip_iqa"], clip_weights=str(tmp_path)))
    result = metric.compute(*protection_inputs())
    assert result.ok and 0 <= result.value <= 1


def test_heldout_attacker_loss_equals_personalizer_loss(tiny_model, images32) -> None:
    """The held-out loss is the personalizer's own L_pers on the same draws, without grad."""
    personalizer = build_personalizer(PersonalizerConfig(name="textual_inversion"), tiny_model)
    with torch.no_grad():
        latents = tiny_model.encode(images32[:2])
        expected = personalizer.loss(latents, make_generator(3), num_samples=2)
    value = heldout_attacker_loss(personalizer, latents, None, make_generator(3), num_samples=2)
    assert value == pytest.approx(float(expected), rel=1e-6)
    assert personalizer.training  # the caller's mode is restored
