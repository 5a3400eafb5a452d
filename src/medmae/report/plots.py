"""The label-efficiency plot: the headline metric vs the labelled fraction, mean and 95 % CI band per
initialisation, the fractions themselves on the x axis, the chance level where there is one; written as PNG (for
the HTML report), SVG and PDF (for papers)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medmae.figures import short_label
from medmae.report.arms import BASELINE_PREFIX
from medmae.report.tables import CHANCE, metric_label, percent

PLOT_FORMATS = ("png", "svg", "pdf")
MARKERS = "osD^vP*X"
ARCH_NAMES = {"vit": "ViT", "swin": "Swin", "resenc": "ResEnc U-Net"}


def init_label(name: str, path: str, details: dict[str, dict[str, Any]]) -> str:
    """A legend entry a reader understands: ``scratch (random init)``, ``MAE "mae75" (mask 75 %)``, ``encoder file "x"``,
    ``MONAI resnet18 (baseline, from scratch)``."""
    if path == "scratch":
        return "scratch (random init)"
    if path.startswith(BASELINE_PREFIX):
        return f"MONAI {path[len(BASELINE_PREFIX):]} (baseline, from scratch)"
    d = details.get(name)
    if d is None:
        return short_label(f'pretrained encoder "{name}"', 40)
    ratio = f", mask {100 * d['mask_ratio']:g} %" if d.get("mask_ratio") is not None else ""
    arch = ARCH_NAMES.get(d.get("arch") or "vit", d.get("arch"))
    return short_label(f'MAE "{name}"', 28) + f" ({arch}{ratio})"


def tick_labels(fractions: Sequence[float], counts: dict[float, int]) -> list[str]:
    """``5 %`` or, when the cells' splits are known, ``5 %\\n(26)``: the fraction and its labelled cases."""
    return [percent(f) + (f"\n({counts[f]})" if f in counts else "") for f in fractions]


def plot_label_efficiency(agg: Sequence[dict[str, Any]], metric: str, where: str, path: Path, title: str, *,
                          labels: dict[str, str] | None = None, counts: dict[float, int] | None = None) -> list[Path]:
    """Write the plot as ``path`` with each suffix of :data:`PLOT_FORMATS`; returns the files, PNG first."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    labels, counts = labels or {}, counts or {}
    with plt.rc_context({"svg.fonttype": "none", "pdf.fonttype": 42}):  # text stays text: editable, searchable
        fig = _draw(plt, agg, metric, where, title, labels, counts)
        out = []
        for fmt in PLOT_FORMATS:
            target = path.with_suffix(f".{fmt}")
            meta = {"png": {}, "svg": {"Date": None}, "pdf": {"CreationDate": None}}[fmt]  # same input -> same file
            fig.savefig(target, dpi=150, metadata=meta)
            out.append(target)
    plt.close(fig)
    return out


def _draw(plt: Any, agg: Sequence[dict[str, Any]], metric: str, where: str, title: str, labels: dict[str, str],
          counts: dict[float, int]) -> Any:
    from matplotlib.ticker import FixedLocator, NullLocator

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    fractions: set[float] = set()
    for i, init in enumerate(sorted({a["init"] for a in agg}, key=lambda n: (n != "scratch", n))):
        pts = sorted((a for a in agg if a["init"] == init and a["metric"] == metric and a["where"] == where),
                     key=lambda a: a["fraction"])
        if not pts:
            continue
        x = [p["fraction"] for p in pts]
        fractions.update(x)
        line, = ax.plot(x, [p["mean"] for p in pts], marker=MARKERS[i % len(MARKERS)], label=labels.get(init, init))
        ax.fill_between(x, [p["ci_low"] for p in pts], [p["ci_high"] for p in pts], alpha=0.18, color=line.get_color())
    if metric in CHANCE:
        ax.axhline(CHANCE[metric], color="0.45", linestyle="--", linewidth=1, label=f"chance ({CHANCE[metric]:g})")
    ticks = sorted(fractions)
    if ticks and max(ticks) / min(ticks) > 4:
        ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels(tick_labels(ticks, counts), fontsize=8)
    ax.set_xlabel("labelled training cases: % of the training split (cases)" if counts else
                  "labelled training cases (% of the training split)", fontsize=9)
    ax.set_ylabel(metric_label(metric, short_label(where, 24)), fontsize=9)
    ax.set_title(short_label(title, 70), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig
