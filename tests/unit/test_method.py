"""The protection map: gradients, the zero-head identity, trajectory round trips, the budget."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DModel

from continual_ldu.method.objectives import (
    budget_penalty,
    distance,
    dual_update,
    mse_to_psnr,
    personalization_loss,
    psnr_to_mse,
)
from continual_ldu.method.protector import Protector, enforce_budget, quantize
from continual_ldu.method.trajectory import TrajectoryConfig, build_trajectory
from continual_ldu.models.flow_denoiser import FlowConfig, build_flow_model
from continual_ldu.models.perturbation_net import PerturbationNet


def make_protector(model, output: str, name: str = "ddim", flow=None) -> Protector:
    torch.manual_seed(0)
    cfg = TrajectoryConfig(name=name, num_steps=2, strength=0.3)
    net = PerturbationNet(model.unet.config.in_channels, widths=(8, 16), bottleneck=16)
    return Protector(model, build_trajectory(cfg, model, flow), net, output)


def base_noise_predictor(model):
    states = model.encode_prompt(["a photo of sks person"])
    return lambda noisy, t: (
        model.unet(noisy, t, encoder_hidden_states=states.expand(len(noisy), -1, -1)).sample
    )


def roundtrip_loss(protector: Protector, prepared, seed: int) -> torch.Tensor:
    protected, _ = protector(prepared)
    latents = protector.model.encode(protected)  # through decode and encode
    predict = base_noise_predictor(protector.model)
    generator = torch.Generator().manual_seed(seed)
    return -personalization_loss(predict, latents, protector.model.scheduler, generator)


def test_perturbation_net_gradient_reaches_every_parameter(tiny_model, images32):
    """After one step moves the head off zero, every rho parameter gets a non-zero gradient."""
    protector = make_protector(tiny_model, "decode")
    prepared = protector.prepare(images32)
    optimizer = torch.optim.SGD(protector.net.parameters(), lr=1.0)
    for seed in range(2):
        optimizer.zero_grad()
        roundtrip_loss(protector, prepared, seed).backward()
        if seed == 0:
            optimizer.step()
    missing = [
        n
        for n, p in protector.net.named_parameters()
        if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert not missing, f"no gradient reached: {missing}"


def test_perturbation_net_zero_head_is_identity():
    """A fresh net's shift is exactly the identity on latents."""
    net = PerturbationNet(4, widths=(8, 16), bottleneck=16)
    latents = torch.randn(2, 4, 12, 10)  # not a multiple of the downsampling: padded and cropped
    assert torch.equal(net(latents), latents)


def test_protector_zero_head_decode_equals_reconstruction(tiny_model, images32):
    """With rho = 0, decode-mode protection is decode(denoise(invert(encode(x))))."""
    protector = make_protector(tiny_model, "decode")
    with torch.no_grad():
        protected, _ = protector(protector.prepare(images32))
        trajectory = protector.trajectory
        plain = tiny_model.decode(
            trajectory.denoise(trajectory.invert(tiny_model.encode(images32)))
        )
    torch.testing.assert_close(protected, plain.float(), rtol=0, atol=0)


def test_protector_zero_head_residual_returns_input(tiny_model, images32):
    """With rho = 0, residual-mode protection returns x exactly."""
    protector = make_protector(tiny_model, "residual")
    with torch.no_grad():
        protected, _ = protector(protector.prepare(images32))
    torch.testing.assert_close(protected, images32, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["ddim", "flow"])
def test_trajectory_denoise_inverts(tiny_model, images32, name):
    """denoise(invert(z)) stays close to z for the deterministic trajectories."""
    flow = None
    if name == "flow":
        torch.manual_seed(0)
        flow = build_flow_model(4, 16, FlowConfig(widths=(16, 32))).eval()
    trajectory = make_protector(tiny_model, "decode", name, flow).trajectory
    with torch.no_grad():
        latents = tiny_model.encode(images32)
        error = (trajectory.denoise(trajectory.invert(latents)) - latents).pow(2).mean().sqrt()
        naive = (trajectory.denoise(latents) - latents).pow(2).mean().sqrt()  # no inversion
    print(
        f"{name}: rms round-trip error {error:.2e} (latent std {latents.std():.2f}, "
        f"without inversion {naive:.2e})"
    )
    assert error < 1e-2 * latents.std()
    assert naive > 10 * error


def test_trajectory_noise_is_stochastic(tiny_model, images32):
    """The released code's `noise` map depends on its generator (kept for reproduction only)."""
    trajectory = make_protector(tiny_model, "decode", "noise").trajectory
    latents = tiny_model.encode(images32)
    first = trajectory.invert(latents, torch.Generator().manual_seed(0))
    second = trajectory.invert(latents, torch.Generator().manual_seed(1))
    assert not torch.allclose(first, second)


def test_budget_penalty_zero_inside_budget():
    """The hinge is zero inside the budget and grows linearly outside it."""
    budget = psnr_to_mse(36.0)
    inside = torch.tensor([0.5 * budget, budget])
    assert budget_penalty(inside, budget) == 0
    assert budget_penalty(torch.tensor([3 * budget]), budget) == pytest.approx(2.0)


def test_dual_update_raises_lambda_over_budget():
    """Dual ascent raises lambda when over budget and never lets it go negative."""
    assert dual_update(1.0, torch.tensor([2.0]), 1.0, 0.5) == pytest.approx(1.5)
    assert dual_update(0.1, torch.tensor([0.0]), 1.0, 0.5) == 0.0


@pytest.mark.parametrize("kind,budget", [("mse", psnr_to_mse(36.0)), ("linf", 4 / 255)])
def test_enforce_budget_holds_on_8bit_output(kind, budget):
    """An over-budget image is pulled back so that its quantised version meets the budget."""
    generator = torch.Generator().manual_seed(0)
    clean = quantize(torch.rand(3, 3, 16, 16, generator=generator) * 2 - 1)
    protected = clean + 0.2 * torch.randn(3, 3, 16, 16, generator=generator)
    protected[0] = clean[0]  # already inside: untouched
    final, scales = enforce_budget(clean, protected, kind, budget)
    assert torch.equal(final, quantize(final))
    assert (distance(final, clean, kind) <= budget).all()
    assert scales[0] == 1.0 and (scales[1:] < 1.0).all() and (scales[1:] > 0.0).all()
    if kind == "mse":
        assert mse_to_psnr(float(distance(final[1:2], clean[1:2], "mse"))) >= 36.0


def test_flow_model_is_stock_unet():
    """The flow model is a stock diffusers UNet2DModel (save/load for free)."""
    assert isinstance(build_flow_model(4, 8, FlowConfig(widths=(8, 16))), UNet2DModel)
