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
import itertools
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


LEGEND_IN = 2.6  # inches right of the panels for the legend


def panel_size(panels: int) -> tuple[float, float]:
    """Inches per panel: one panel gets room for many curves, several share a grid of three."""
    return (6.0, 4.5) if panels == 1 else (3.6, 3.2)


def family(method: str) -> str:
    """``aspl@8`` -> ``aspl``: the budgets of one method make one curve."""
    return method.split("@", 1)[0]


def budget(method: str) -> str:
    """``aspl@8`` -> ``8``; ``""`` for a method without a budget suffix."""
    return method.partition("@")[2]


def tradeoff_plot(summary: list[dict], x: str, y: str) -> str | None:
    """Protection (y) against imperceptibility (x): one panel per purification and attacker
    where those vary, in it one curve per method family over its budgets (``name@budget``), and
    the unchanged images (no finite x) as the dashed level to beat."""

    def plotted(s: dict) -> bool:  # a finite (x, y) point
        return isinstance(s.get(x), tuple) and isinstance(s.get(y), tuple)

    points = [s for s in summary if plotted(s)]
    if len(points) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tab20 = plt.get_cmap("tab20").colors
    palette = tab20[0::2] + tab20[1::2]  # ten distinct colours first, then their light pairs
    varying = [k for k in ("purification", "attacker") if len({s[k] for s in summary}) > 1]
    panels: dict[tuple, list[dict]] = {}
    for s in summary:
        panels.setdefault(tuple(s[k] for k in varying), []).append(s)
    families = list(dict.fromkeys(family(s["method"]) for s in points))
    colours = dict(zip(families, itertools.cycle(palette), strict=False))
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    width, height = panel_size(len(panels))
    figure, axes = plt.subplots(
        rows, columns, figsize=(width * columns + LEGEND_IN, height * rows), squeeze=False
    )
    handles: dict[str, object] = {}
    for axis, (key, members) in zip(axes.flat, panels.items(), strict=False):
        for name in families:
            curve = sorted(
                (s for s in members if plotted(s) and family(s["method"]) == name),
                key=lambda s: s[x][0],
            )
            if not curve:
                continue
            (handles[name],) = axis.plot(
                [s[x][0] for s in curve],
                [s[y][0] for s in curve],
                marker="o",
                markersize=4,
                linewidth=1,
                color=colours[name],
            )
            for s in curve:
                if budget(s["method"]):
                    axis.annotate(
                        budget(s["method"]),
                        (s[x][0], s[y][0]),
                        fontsize=6,
                        xytext=(3, 3),
                        textcoords="offset points",
                        color=colours[name],
                    )
        for s in members:
            if isinstance(s.get(y), tuple) and not plotted(s):
                line = axis.axhline(s[y][0], linestyle="--", linewidth=0.8, color="grey")
                handles[f"{s['method']} (unchanged: the level to beat)"] = line
        axis.set_title(" / ".join(key), fontsize=8)
        axis.set_xlabel(x, fontsize=8)
        axis.set_ylabel(y, fontsize=8)
        axis.tick_params(labelsize=7)
    for axis in list(axes.flat)[len(panels) :]:
        axis.set_visible(False)
    figure.suptitle("protection against imperceptibility", fontsize=10)
    figure.legend(
        list(handles.values()), list(handles), fontsize=7, loc="center right", frameon=False
    )
    figure.tight_layout(rect=(0, 0, 1 - LEGEND_IN / (width * columns + LEGEND_IN), 1))
    buffer = io.BytesIO()
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
