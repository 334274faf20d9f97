"""Face metrics for the SynthFaces world: identity similarity (ISM) and detection failure (FDFR)
measured with the world's own evaluators instead of real-face models.

Real face models (dlib, ArcFace, RetinaFace) were never shown cartoon faces, so on SynthFaces the
attacker's generations are scored by the identity net and face classifier trained on the
world's pretraining identities (``continual_ldu.reference.evaluators``). Their folder (written by
``python -m continual_ldu.reference.evaluators OUT_DIR``) is ``metrics.synth_evaluators_weights``.
Images of any size are resized (antialiased bilinear) to the evaluators' resolution.
"""

from __future__ import annotations

import numpy as np
import torch

from continual_ldu.metrics.base import Metric, MetricResult, check_images, summarize, weights_file

FACE_THRESHOLD = 0.5  # face probability below which a generation counts as "no face"


class _SynthMetric(Metric):
    """Loads the evaluators from ``metrics.synth_evaluators_weights`` on first use."""

    kind = "protection"
    weights_key = "synth_evaluators_weights"

    def __init__(self, cfg=None, device="cpu") -> None:
        super().__init__(cfg, device)
        self._evaluators = None

    @property
    def evaluators(self):
        if self._evaluators is None:
            from continual_ldu.reference.evaluators import load_evaluators

            folder = weights_file(self.weights_path, self.weights_key)
            self._evaluators = load_evaluators(folder, self.device)
        return self._evaluators


class ISMSynth(_SynthMetric):
    """SynthFaces ISM: mean cosine of each generation's identity embedding to the mean clean
    reference embedding; lower protects more (cosine in [-1, 1]).

    Embeddings: the SynthFaces identity net (L2-normalised, CosFace-trained on pretraining
    identities only) from ``metrics.synth_evaluators_weights``; the reference embeddings are averaged
    and re-normalised into one identity vector. Every image is embedded (the world's images are
    all face crops); ``extra["mean_face_probability"]`` says how face-like the generations are.
    Compare ISMs against the unprotected baseline, and against other identities' reference
    means, rather than reading absolute values.
    """

    name = "ism_synth"
    higher_is_better = False

    def _compute(self, generations: torch.Tensor, reference: torch.Tensor) -> MetricResult:
        generations = check_images(generations, "generations")
        reference = check_images(reference, "reference")
        ev = self.evaluators
        identity = ev.embed(reference.to(self.device)).mean(0)
        identity = identity / identity.norm().clamp_min(1e-12)
        scores = ev.embed(generations.to(self.device)) @ identity
        face = ev.face_probability(generations.to(self.device))
        return summarize(
            scores.cpu(),
            reference_n=len(reference),
            mean_face_probability=float(face.mean()),
        )


class FDFRSynth(_SynthMetric):
    """SynthFaces FDFR: the fraction of generations that the SynthFaces face classifier scores
    below 0.5 face probability; higher protects more (in [0, 1]).

    Classifier: a small CNN trained on renders of pretraining identities against patch-shuffled
    and background-only renders, from ``metrics.synth_evaluators_weights``. ``extra["mean_score"]`` is
    the mean face probability of the generations.
    """

    name = "fdfr_synth"
    higher_is_better = True

    def _compute(
        self, generations: torch.Tensor, reference: torch.Tensor | None = None
    ) -> MetricResult:
        generations = check_images(generations, "generations")
        probs = self.evaluators.face_probability(generations.to(self.device)).cpu().numpy()
        misses = int((probs < FACE_THRESHOLD).sum())
        return MetricResult(
            value=misses / len(probs),
            extra={
                "n": len(probs),
                "no_face": misses,
                "mean_score": float(np.mean(probs)),
                "threshold": FACE_THRESHOLD,
            },
        )
