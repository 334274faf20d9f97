"""Reports: a CSV, a self-contained HTML page (tables, image grids, a trade-off plot), MLflow.

The HTML embeds every picture as base64, so the one file can be mailed or archived. Tables show
the mean and spread over concepts per (method, purification, attacker); a metric skipped for
lack of weights shows its reason, never a number.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import statistics
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from continual_ldu.data.images import to_uint8

KEYS = ("concept", "method", "purification", "attacker")
GROUP = ("method", "purification", "attacker")


def metric_names(rows: list[dict]) -> list[str]:
    names: list[str] = []
    for row in rows:
        names += [k for k in row if k not in KEYS and k not in names]
    return names


def write_csv(rows: list[dict], path: Path) -> Path:
    """One line per (concept, method, purification, attacker) with every metric."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*KEYS, *metric_names(rows)])
        writer.writeheader()
        writer.writerows(rows)
    return path


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and spread (sample std) over concepts per (method, purification, attacker)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in GROUP), []).append(row)
    summary = []
    for key, members in groups.items():
        entry = dict(zip(GROUP, key, strict=True))
        for name in metric_names(members):
            values = [m.get(name) for m in members]
            numbers = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
            if values and all(isinstance(v, float) and v == math.inf for v in values):
                entry[name] = "inf (unchanged images)"
            elif numbers:
                spread = statistics.stdev(numbers) if len(numbers) > 1 else 0.0
                entry[name] = (statistics.fmean(numbers), spread)
            else:
                entry[name] = next((v for v in values if isinstance(v, str)), "n/a")
        summary.append(entry)
    return summary


def cell(value) -> str:
    if isinstance(value, tuple):
        return f"{value[0]:.4g} &plusmn; {value[1]:.2g}"
    return f"<span class='skip'>{html.escape(str(value))}</span>"


def png_base64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def grid_image(entry: dict, count: int = 4) -> np.ndarray:
    """Rows: clean | protected | purified, then the first generations."""
    rows = [
        entry[k][:count].float().cpu() for k in ("clean", "protected", "purified", "generations")
    ]
    # Pad each row with white tiles so that every kind of image keeps a row of its own.
    rows = [torch.cat([r, torch.ones(count - len(r), *r.shape[1:])]) for r in rows]
    tiles = torch.cat(rows)
    return to_uint8(make_grid(tiles, nrow=count, padding=2, pad_value=1.0)[None])[0]


def tradeoff_plot(summary: list[dict], x: str, y: str) -> str | None:
    """Protection (y) against imperceptibility (x), one point per (method, purification)."""
    points = [
        (s[x][0], s[y][0], f"{s['method']}/{s['purification']}")
        for s in summary
        if isinstance(s.get(x), tuple) and isinstance(s.get(y), tuple)
    ]
    if len(points) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 4))
    for px, py, label in points:
        axis.scatter(px, py)
        axis.annotate(label, (px, py), fontsize=7)
    for s in summary:  # unchanged images (no finite x): the level to beat, as a line
        if isinstance(s.get(y), tuple) and not isinstance(s.get(x), tuple):
            axis.axhline(s[y][0], linestyle="--", linewidth=0.8, color="grey")
            axis.annotate(f"{s['method']}/{s['purification']}", (points[0][0], s[y][0]), fontsize=7)
    axis.set_xlabel(x)
    axis.set_ylabel(y)
    axis.set_title("protection against imperceptibility")
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def write_html(
    rows: list[dict],
    grids: list[dict],
    path: Path,
    title: str,
    tradeoff_y: str = "heldout_loss_ratio",
) -> Path:
    """The self-contained report page (the trade-off plot: ``tradeoff_y`` against PSNR)."""
    summary = summarize(rows)
    names = metric_names(rows)
    header = "".join(f"<th>{html.escape(n)}</th>" for n in [*GROUP, *names])
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(str(s[k]))}</td>" for k in GROUP)
        + "".join(f"<td>{cell(s.get(n, 'n/a'))}</td>" for n in names)
        + "</tr>"
        for s in summary
    )
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f"<h2>Metrics (mean &plusmn; spread over concepts)</h2><table id='metrics'><tr>{header}</tr>{body}</table>",
    ]
    plot = tradeoff_plot(summary, "psnr", tradeoff_y)
    if plot:
        parts.append(f"<h2>Trade-off</h2><img id='tradeoff' src='data:image/png;base64,{plot}'>")
    parts.append("<h2>Images: clean | protected | purified | generations</h2>")
    for entry in grids:
        label = " / ".join(str(entry[k]) for k in KEYS)
        parts.append(
            f"<figure><img class='grid' src='data:image/png;base64,{png_base64(grid_image(entry))}'>"
            f"<figcaption>{html.escape(label)}</figcaption></figure>"
        )
    style = (
        "body{font-family:sans-serif;margin:2em} table{border-collapse:collapse} "
        "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px} .skip{color:#999} "
        "img.grid{image-rendering:pixelated;width:256px} figure{display:inline-block}"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
