"""Imperceptibility: how far the protected images are from the clean ones.

Every class here takes ``compute(protected, clean)`` on (B, 3, H, W) [0, 1] tensors of the same
images. PSNR, SSIM and MS-SSIM need no weights; LPIPS needs a local AlexNet state dict, FID the
local FID Inception-v3 weights (``MetricsConfig.lpips_weights``, ``.fid_inception_weights``).
``FIDGenerations`` is FID used as a protection metric, on the attacker's generations.
"""

from __future__ import annotations

import math
import warnings

import torch

from continual_ldu.method.objectives import build_lpips, mse_to_psnr
from continual_ldu.metrics.base import (
    Metric,
    MetricResult,
    check_images,
    check_pair,
    summarize,
    weights_file,
)

MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, fine to coarse
SSIM_KERNEL = 11


class PSNR(Metric):
    """Peak signal-to-noise ratio in dB on [0, 1] images; higher is more imperceptible.

    The mean of per-image PSNRs (spread: their std). An unchanged image has PSNR ``inf``, which
    is reported as such, without a cap. Source: the textbook definition, with the project's
    ``mse_to_psnr`` (the same units as the MSE budget). Weights: none.
    """

    name = "psnr"
    kind = "fidelity"
    higher_is_better = True

    def _compute(self, protected: torch.Tensor, clean: torch.Tensor) -> MetricResult:
        protected, clean = check_pair(protected, clean)
        mse = (protected.double() - clean.double()).pow(2).flatten(1).mean(1)
        return summarize([mse_to_psnr(float(m)) for m in mse])


class SSIM(Metric):
    """Structural similarity (Wang et al. 2004), Gaussian 11x11 window, sigma 1.5, on [0, 1].

    Higher is more imperceptible; 1 for identical images. Mean over images (spread: std).
    Source: ``torchmetrics.functional.structural_similarity_index_measure``. Weights: none.
    """

    name = "ssim"
    kind = "fidelity"
    higher_is_better = True

    def _compute(self, protected: torch.Tensor, clean: torch.Tensor) -> MetricResult:
        from torchmetrics.functional.image import structural_similarity_index_measure

        protected, clean = check_pair(protected, clean)
        if min(protected.shape[-2:]) < SSIM_KERNEL:
            raise ValueError(f"SSIM needs images of at least {SSIM_KERNEL} px")
        per_image = structural_similarity_index_measure(
            protected.double(), clean.double(), data_range=1.0, reduction="none"
        )
        return summarize(per_image)


def ms_ssim_scales(height: int, width: int, kernel: int = SSIM_KERNEL) -> int:
    """The most MS-SSIM scales (<= 5) that torchmetrics accepts at this image size."""
    side = min(height, width)
    for scales in range(len(MS_SSIM_BETAS), 0, -1):
        if side >= 2**scales and side // max(1, scales - 1) ** 2 > kernel - 1:
            return scales
    raise ValueError(f"MS-SSIM needs images of at least {kernel} px, got {height}x{width}")


class MSSSIM(Metric):
    """Multi-scale SSIM (Wang et al. 2003); higher is more imperceptible, 1 when identical.

    Five scales with the paper's exponents from 176 px up. Smaller images use as many scales as
    fit (``extra["scales"]``), the exponents of those scales renormalised to sum to 1. Negative
    per-scale terms are clipped at 0 (torchmetrics' ``normalize="relu"``), so the value is never
    NaN. Source: ``torchmetrics.functional.multiscale_structural_similarity_index_measure``.
    Weights: none.
    """

    name = "ms_ssim"
    kind = "fidelity"
    higher_is_better = True

    def _compute(self, protected: torch.Tensor, clean: torch.Tensor) -> MetricResult:
        from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

        protected, clean = check_pair(protected, clean)
        scales = ms_ssim_scales(*protected.shape[-2:])
        betas = MS_SSIM_BETAS[:scales]
        betas = tuple(b / sum(betas) for b in betas)
        per_image = multiscale_structural_similarity_index_measure(
            protected.double(),
            clean.double(),
            data_range=1.0,
            reduction="none",
            betas=betas,
            normalize="relu",
        )
        return summarize(per_image, scales=scales)


class LPIPS(Metric):
    """LPIPS (Zhang et al. 2018), AlexNet variant; lower is more imperceptible, 0 if identical.

    Mean over images (spread: std). Source: the ``lpips`` package (its linear heads ship in the
    wheel) with the AlexNet backbone read by ``objectives.build_lpips`` from
    ``metrics.lpips_weights``, a torchvision AlexNet state dict.
    """

    name = "lpips"
    kind = "fidelity"
    weights_key = "lpips_weights"
    higher_is_better = False

    def __init__(self, cfg=None, device="cpu") -> None:
        super().__init__(cfg, device)
        self._net = None

    def _compute(self, protected: torch.Tensor, clean: torch.Tensor) -> MetricResult:
        protected, clean = check_pair(protected, clean)
        if self._net is None:
            path = weights_file(self.weights_path, self.weights_key)
            with warnings.catch_warnings():  # lpips passes torchvision's old `pretrained=`
                warnings.simplefilter("ignore", UserWarning)
                self._net = build_lpips(str(path), self.device)
        with torch.no_grad():
            per_image = self._net(
                protected.to(self.device), clean.to(self.device), normalize=True
            ).flatten()
        return summarize(per_image)


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """||mu_r - mu_f||^2 + tr(S_r) + tr(S_f) - 2 tr((S_r S_f)^(1/2)), exactly, in float64.

    With centred features A (n_r x d) and B (n_f x d) scaled by 1/sqrt(n - 1), S_r = A^T A and
    S_f = B^T B, and the eigenvalues of S_r S_f are the squared singular values of A B^T, so the
    trace term is the nuclear norm of the small n_r x n_f matrix A B^T: no d x d matrix square
    root (2048 x 2048 in FID), and no imaginary parts to discard.
    """
    if len(real) < 2 or len(fake) < 2:
        raise ValueError("the Frechet distance needs at least two samples in each set")
    real, fake = real.double().flatten(1), fake.double().flatten(1)
    mu_r, mu_f = real.mean(0), fake.mean(0)
    a = (real - mu_r) / math.sqrt(len(real) - 1)
    b = (fake - mu_f) / math.sqrt(len(fake) - 1)
    cross = torch.linalg.svdvals(a @ b.T).sum()
    value = (mu_r - mu_f).pow(2).sum() + a.pow(2).sum() + b.pow(2).sum() - 2 * cross
    return float(value.clamp_min(0))


class FID(Metric):
    """Frechet Inception distance between the protected and the clean set; lower is more
    imperceptible, 0 for identical sets.

    Pool-3 (2048-d) features of torch-fidelity's FID Inception-v3 as wrapped by torchmetrics
    (``NoTrainInceptionV3``: uint8 input, antialiased resize to 299), and the exact small-sample
    form of the distance (``frechet_distance``). Needs >= 2 images per set; with few images the
    covariances are low-rank and FID is a coarse, biased number. Weights:
    ``metrics.fid_inception_weights`` (pt_inception-2015-12-05-6726825d.pth).
    """

    name = "fid"
    kind = "fidelity"
    weights_key = "fid_inception_weights"
    higher_is_better = False

    def __init__(self, cfg=None, device="cpu") -> None:
        super().__init__(cfg, device)
        self._net = None

    def features(self, images: torch.Tensor) -> torch.Tensor:
        if self._net is None:
            from torchmetrics.image.fid import NoTrainInceptionV3

            path = weights_file(self.weights_path, self.weights_key)
            net = NoTrainInceptionV3(
                name="inception-v3-compat",
                features_list=["2048"],
                feature_extractor_weights_path=str(path),
            )
            self._net = net.to(self.device)
        as_bytes = (images.clamp(0, 1) * 255).round().to(torch.uint8).to(self.device)
        with torch.no_grad():
            return self._net(as_bytes).double().cpu()

    def _compute(self, protected: torch.Tensor, clean: torch.Tensor) -> MetricResult:
        protected, clean = check_images(protected, "protected"), check_images(clean, "clean")
        value = frechet_distance(self.features(clean), self.features(protected))
        return MetricResult(value=value, extra={"n_real": len(clean), "n_fake": len(protected)})


class FIDGenerations(FID):
    """FID of the attacker's generations to the clean reference set; higher protects more.

    The same features and distance as ``FID``; ``compute(generations, reference)``. Weights:
    ``metrics.fid_inception_weights``.
    """

    name = "fid_generations"
    kind = "protection"
    higher_is_better = True

    def _compute(self, generations: torch.Tensor, reference: torch.Tensor) -> MetricResult:
        generations = check_images(generations, "generations")
        reference = check_images(reference, "reference")
        value = frechet_distance(self.features(reference), self.features(generations))
        return MetricResult(
            value=value, extra={"n_real": len(reference), "n_fake": len(generations)}
        )
