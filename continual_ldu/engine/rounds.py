"""What the trainer writes and restores around each round: state, RNG, files, checkpoints."""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torchmetrics.functional.image import structural_similarity_index_measure
from torchvision.utils import make_grid

from continual_ldu.config import dump_config
from continual_ldu.data.images import save_png, to_uint8
from continual_ldu.method.objectives import mse_to_psnr
from continual_ldu.models.perturbation_net import PerturbationNet
from continual_ldu.personalizers import generate_class_images


@dataclass
class RunState:
    """The loop's counters and the dual variable (everything else has its own state_dict)."""

    round: int = 0
    step_min: int = 0
    step_max: int = 0
    lam: float = 1.0
    items_seen: int = 0
    run_id: str | None = None
    world_size: int = 1


@torch.no_grad()
def encode_batched(model, images: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """VAE latents of a batch of [-1, 1] images, in chunks."""
    return torch.cat([model.encode(images[i : i + batch]) for i in range(0, len(images), batch)])


def class_latents(path: Path, cfg, model, resolution: int) -> torch.Tensor:
    """Prior-preservation latents from the base model, generated once and cached at ``path``."""
    if path.is_file():
        return torch.load(path, map_location=model.device)
    images = generate_class_images(
        model,
        cfg.class_prompt,
        cfg.num_class_images,
        cfg.class_inference_steps,
        cfg.seed,
        resolution,
    )
    latents = encode_batched(model, images.to(model.device))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(latents.cpu(), path)
    return latents


def rng_state(generator: torch.Generator) -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "generator": generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def load_rng(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def published_fidelity(published: torch.Tensor, clean: torch.Tensor) -> dict[str, float]:
    """Mean PSNR (finite images only) and SSIM of a published batch, on the 8-bit grid."""
    x, y = (published.float().cpu() + 1) / 2, (clean.float().cpu() + 1) / 2
    mse = (x - y).pow(2).flatten(1).mean(1)
    psnrs = [mse_to_psnr(float(m)) for m in mse if m > 0]
    return {
        "psnr": float(np.mean(psnrs)) if psnrs else float("inf"),  # every image unchanged
        "ssim": float(structural_similarity_index_measure(x, y, data_range=1.0)),
    }


def image_grid(
    clean: torch.Tensor, published: torch.Tensor, count: int = 4, gain: float = 10.0
) -> np.ndarray:
    """Rows of clean | protected | amplified difference (|x' - x| * gain), as uint8 HxWx3."""
    x, y = clean[:count].float().cpu(), published[:count].float().cpu()
    diff = ((y - x).abs() * gain).clamp(0, 2) - 1
    tiles = torch.stack([x, y, diff], dim=1).flatten(0, 1)
    grid = make_grid(tiles, nrow=3, padding=2, pad_value=1.0)
    return to_uint8(grid[None])[0]


def save_published(published: torch.Tensor, items, folder: Path) -> None:
    """Each published image as ``<key>.png`` (the stream's stable key)."""
    for array, item in zip(to_uint8(published.cpu()), items, strict=True):
        save_png(array, folder / Path(item.key).with_suffix(".png"))


def write_checkpoint(trainer, staging: Path) -> None:
    """Write this rank's part (and, on rank 0, the shared part) of a checkpoint."""
    dist = trainer.dist
    trainer.runner.save_state(staging)  # collective under DeepSpeed
    rank_part = {"rng": rng_state(trainer.generator), "stream": trainer.stream.state_dict()}
    torch.save(rank_part, staging / f"rank-{dist.rank}.pt")
    save_file(
        trainer.replay.state_dict() or {}, str(staging / f"replay-rank-{dist.rank}.safetensors")
    )
    if not dist.is_main:
        return
    dist.unwrap(trainer.net).save_pretrained(staging / "net")
    torch.save(trainer.net_optimizer.state_dict(), staging / "net_optimizer.pt")
    trainer.attacker.save(staging / "attacker")
    save_file(trainer.pool.state_dict() or {}, str(staging / "pool.safetensors"))
    trainer.state.world_size = dist.world_size
    (staging / "trainer_state.json").write_text(json.dumps(asdict(trainer.state), indent=2))
    dump_config(trainer.cfg, staging / "config.yaml")


def load_aligned(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file as freshly allocated tensors.

    Tensors viewed straight out of the file can sit at unaligned addresses, which makes CPU
    kernels take other vector paths and round differently; fresh copies keep resume exact.
    """
    return {name: value.clone() for name, value in load_file(str(path)).items()}


def read_checkpoint(trainer, path: Path) -> None:
    """Restore everything ``write_checkpoint`` wrote."""
    dist = trainer.dist
    state = RunState(**json.loads((path / "trainer_state.json").read_text()))
    if state.world_size != dist.world_size:
        raise ValueError(
            f"{path} was written by {state.world_size} process(es); resume with the same "
            f"number (this launch has {dist.world_size}) or start a new run folder"
        )
    trainer.state = state
    net = PerturbationNet.from_pretrained(path / "net")
    dist.unwrap(trainer.net).load_state_dict(net.state_dict())
    trainer.net_optimizer.load_state_dict(torch.load(path / "net_optimizer.pt", weights_only=False))
    trainer.attacker.load(path / "attacker")
    trainer.runner.load_state(path)
    trainer.pool.load_state_dict(load_aligned(path / "pool.safetensors"))
    trainer.replay.load_state_dict(load_aligned(path / f"replay-rank-{dist.rank}.safetensors"))
    rank_part = torch.load(path / f"rank-{dist.rank}.pt", weights_only=False)
    trainer.stream.load_state_dict(rank_part["stream"])
    load_rng(rank_part["rng"], trainer.generator)
