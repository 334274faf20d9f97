"""The report's summary and trade-off plot (one panel per purification, one curve per family)."""

import base64
import io
import math

from PIL import Image

from continual_ldu.evaluation.report import (
    LEGEND_IN,
    family,
    panel_size,
    summarize,
    tradeoff_plot,
)


def rows(purifications):
    out = []
    for concept in ("a", "b"):
        for purification in purifications:
            out.append(
                {
                    "concept": concept,
                    "method": "none",
                    "purification": purification,
                    "attacker": "lora",
                    "psnr": math.inf,
                    "ism": 0.14,
                }
            )
            for method, psnr, ism in (
                ("aspl@4", 36.0, 0.13),
                ("aspl@8", 31.0, 0.12),
                ("static_ldu", 36.0, 0.15),
            ):
                out.append(
                    {
                        "concept": concept,
                        "method": method,
                        "purification": purification,
                        "attacker": "lora",
                        "psnr": psnr + (concept == "b"),
                        "ism": ism,
                    }
                )
    return out


def width(plot: str) -> int:
    return Image.open(io.BytesIO(base64.b64decode(plot))).size[0]


def test_family_strips_the_budget():
    assert family("aspl@8") == "aspl"
    assert family("static_ldu@33dB") == "static_ldu"
    assert family("static_ldu_roundtrip") == "static_ldu_roundtrip"


def test_summary_is_mean_and_spread_over_concepts_and_unchanged_images_say_so():
    summary = {s["method"]: s for s in summarize(rows(["none"]))}
    assert summary["aspl@8"]["psnr"] == (31.5, math.sqrt(0.5))
    assert summary["none"]["psnr"] == "inf (unchanged images)"


def test_tradeoff_plot_has_one_panel_per_purification():
    one = tradeoff_plot(summarize(rows(["none"])), "psnr", "ism")
    two = tradeoff_plot(summarize(rows(["none", "jpeg"])), "psnr", "ism")
    assert width(one) == round((panel_size(1)[0] + LEGEND_IN) * 110)
    assert width(two) == round((panel_size(2)[0] * 2 + LEGEND_IN) * 110)


def test_tradeoff_plot_needs_two_protected_points():
    only = [r for r in rows(["none"]) if r["method"] in ("none", "static_ldu")]
    assert tradeoff_plot(summarize(only), "psnr", "ism") is None
