"""``diffpure``: SDEdit-style purification with the base model (encode, noise to t*, denoise).

Reuses the trajectory module's pieces: ``ddim_grid`` for the DDIM step grid and coefficients,
``unet_eps_field`` for the base UNet's noise prediction, and ``NoisingTrajectory`` for "noise
forward to strength * T from the generator, then DDIM back to 0".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from continual_ldu.method.trajectory import NoisingTrajectory, ddim_grid, unet_eps_field
from continual_ldu.purifications.base import Purification, PurificationConfig

if TYPE_CHECKING:
    from continual_ldu.models.loading import LatentDiffusionModel


class DiffPure(Purification):
    """DiffPure (Nie et al., ICML 2022) in its SDEdit form (Meng et al., ICLR 2022).

    The images are encoded with the base model's VAE, noised forward to t* = strength * T with
    fresh Gaussian noise, denoised by deterministic DDIM with the base UNet, and decoded. The
    small amount of noise drowns the adversarial perturbation while the image's content
    survives; this is the latent-diffusion purification used against protections.

    Parameters (``PurificationConfig``):
      - ``diffpure_strength``: t*/T (default 0.1; the literature uses 0.1-0.2).
      - ``diffpure_steps``: DDIM steps from t* to 0 (default 15).
      - ``prompt``: the UNet's text condition (default "", unconditional as in DiffPure).
    Needs the base ``LatentDiffusionModel`` (its VAE, UNet, text encoder and noise schedule).
    """

    needs_model = True

    def __init__(self, cfg: PurificationConfig, model: LatentDiffusionModel | None = None) -> None:
        super().__init__(cfg, model)
        with torch.no_grad():
            states = model.encode_prompt([cfg.prompt])
        times, coefficients, end_abar = ddim_grid(
            model.scheduler.alphas_cumprod, cfg.diffpure_strength, cfg.diffpure_steps
        )
        # No fixed-point iterations: NoisingTrajectory's invert is the random forward noising.
        self.trajectory = NoisingTrajectory(
            unet_eps_field(model.unet, states),
            times,
            coefficients,
            fixed_point_iters=0,
            end_alpha_bar=end_abar,
        )

    def _apply(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        latents = self.model.encode(images.to(self.model.device, self.model.dtype))
        noisy = self.trajectory.invert(latents, generator)
        return self.model.decode(self.trajectory.denoise(noisy))

    def describe(self) -> str:
        cfg = self.cfg
        return (
            f"diffpure(strength={cfg.diffpure_strength}, steps={cfg.diffpure_steps}, "
            f"prompt={cfg.prompt!r})"
        )
