"""Protect a folder: batched forward passes, the 8-bit budget promise, PNGs and a summary.

Bad inputs are skipped with a reason (``continual_ldu.data.images``); everything else is still
protected. The summary's PSNR/SSIM are measured on the files as saved (read back from disk).
The input folder is only read.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchmetrics.functional.image import structural_similarity_index_measure
from tqdm.auto import tqdm

from continual_ldu.data.images import (
    LoadedImage,
    Skipped,
    iter_folder,
    prepare,
    save_png,
    to_tensor,
    to_uint8,
)
from continual_ldu.method.objectives import mse_to_psnr
from continual_ldu.method.protector import Protector, enforce_budget

EXIT_SKIPPED = 3  # the CLI's exit code when some inputs were skipped


def output_name(name: str, taken: set[str]) -> str:
    """``photo.jpg`` -> ``photo.png``; keeps the old suffix when that would collide."""
    path = Path(name)
    candidate = str(path.with_suffix(".png"))
    if candidate in taken:
        candidate = str(path.with_name(path.name + ".png"))
    taken.add(candidate)
    return candidate


def batches(items: Iterator, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def read_back(path: Path) -> torch.Tensor:
    """A saved PNG as a [0, 1] (1, 3, H, W) tensor."""
    array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def file_fidelity(saved: Path, clean: torch.Tensor) -> dict[str, float]:
    """PSNR, SSIM and L-inf (in x/255) of a saved file against the clean [-1, 1] image, on 8 bits."""
    protected = read_back(saved)
    reference = torch.from_numpy(to_uint8(clean[None]).astype(np.float32) / 255).permute(0, 3, 1, 2)
    mse = float((protected - reference).pow(2).mean())
    ssim = float(structural_similarity_index_measure(protected, reference, data_range=1.0))
    linf = round(float((protected - reference).abs().max()) * 255)  # whole grey levels
    # An unchanged file has infinite PSNR; JSON has no infinity, so it is null and flagged.
    psnr = mse_to_psnr(mse) if mse > 0 else None
    return {"psnr": psnr, "ssim": ssim, "linf_255": linf, "identical": mse == 0}


class BaselineProtector:
    """A pixel-space baseline in the shape ``protect_folder`` expects of a ``Protector``.

    ``prepare`` only carries the batch; the call runs the baseline (with gradients, inside the
    folder loop's ``no_grad``) against ``reference``, the owner's clean set (None: each batch).
    """

    def __init__(self, baseline, reference: torch.Tensor | None = None) -> None:
        self.baseline, self.reference, self.model = baseline, reference, baseline.model

    def prepare(self, images: torch.Tensor, generator: torch.Generator | None = None):
        return images, generator

    def __call__(self, prepared) -> tuple[torch.Tensor, None]:
        images, generator = prepared
        return self.baseline.protect(images, generator, reference=self.reference), None


def protect_folder(
    protector: Protector | BaselineProtector,
    input_dir: Path,
    output_dir: Path,
    resolution: int,
    budget_kind: str,
    budget: float,
    batch_size: int = 8,
    min_side: int = 64,
    max_pixels: int = 40_000_000,
    seed: int = 0,
) -> dict:
    """Protect every usable image in ``input_dir`` into ``output_dir``; return the summary."""
    records, skipped, taken = [], [], set()
    started = time.perf_counter()
    items = iter_folder(input_dir, min_side, max_pixels)
    bar = tqdm(desc="protect", unit="img", dynamic_ncols=True)
    generator = torch.Generator().manual_seed(seed)
    for batch in batches(items, batch_size):
        skipped += [item for item in batch if isinstance(item, Skipped)]
        images = [item for item in batch if isinstance(item, LoadedImage)]
        if images:
            records += protect_batch(
                protector, images, output_dir, resolution, budget_kind, budget, taken, generator
            )
        bar.update(len(batch))
    bar.close()
    for item in skipped:
        print(f"skipped {item.path}: {item.reason}")
    return summarize(records, skipped, budget_kind, budget, time.perf_counter() - started)


@torch.no_grad()
def protect_batch(protector, images, output_dir, resolution, budget_kind, budget, taken, generator):
    """One forward pass for a batch, then the budget promise and the files."""
    device = protector.model.device
    clean = to_tensor([prepare(item.image, resolution) for item in images]).to(device)
    protected, _ = protector(protector.prepare(clean, generator))
    final, scales = enforce_budget(clean, protected, budget_kind, budget)
    arrays, records = to_uint8(final.cpu()), []
    for item, array, scale, x in zip(images, arrays, scales, clean.cpu(), strict=True):
        path = save_png(array, output_dir / output_name(item.name, taken))
        record = {"name": item.name, "output": str(path), **file_fidelity(path, x)}
        record.update(pulled_back=bool(scale < 1.0), budget_scale=float(scale), notes=item.notes)
        records.append(record)
    return records


def summarize(
    records: list[dict], skipped: list[Skipped], kind: str, budget: float, seconds: float
) -> dict:
    """The JSON summary: per-image fidelity, what was pulled back, what was skipped."""
    psnrs = [r["psnr"] for r in records if r["psnr"] is not None]
    budget_units = {
        "mse": {"psnr_db": mse_to_psnr(budget)},
        "linf": {"linf_255": budget * 255},
        "lpips": {"lpips": budget},
    }[kind]
    return {
        "num_protected": len(records),
        "num_skipped": len(skipped),
        "num_pulled_back": sum(r["pulled_back"] for r in records),
        "budget": {"kind": kind, **budget_units},
        "mean_psnr": float(np.mean(psnrs)) if psnrs else None,
        "min_psnr": float(np.min(psnrs)) if psnrs else None,
        "mean_ssim": float(np.mean([r["ssim"] for r in records])) if records else None,
        "max_linf_255": max((r["linf_255"] for r in records), default=None),
        "seconds": seconds,
        "images": records,
        "skipped": [{"path": str(s.path), "reason": s.reason} for s in skipped],
    }


def write_summary(summary: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=2, allow_nan=False), encoding="utf-8")
    tmp.replace(path)
