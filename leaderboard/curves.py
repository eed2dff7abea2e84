"""Label-scarcity curves: primary metric vs label fraction (log axis), one panel per task.

One line per backbone (mean over seeds) with its 95% bootstrap band (see the analysis's
resampling). Random-init entries are drawn dashed with hollow markers and labelled
"[random-init]", controls dotted with hollow squares and labelled "[control]", so neither can
pass for a trained encoder in a figure.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

from brainbench.errors import BenchError  # noqa: E402
from brainbench.leaderboard.analysis import Analysis  # noqa: E402


def draw_task(ax, analysis: Analysis, task: str) -> int:
    """Draw one task's curves on ``ax``; returns how many lines were drawn."""
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    lines = 0
    for i, entry in enumerate(analysis.entries):
        fractions = analysis.fractions(task, entry)
        if not fractions:
            continue
        summaries = [analysis.summary(entry, task, f) for f in fractions]
        colour = colours[i % len(colours)]
        style = (dict(linestyle="--", marker="o", markerfacecolor="white") if entry.is_random
                 else dict(linestyle=":", marker="s", markerfacecolor="white")
                 if entry.is_control else dict(linestyle="-", marker="o"))
        ax.plot(fractions, [s.mean for s in summaries], color=colour, label=entry.display,
                **style)
        ax.fill_between(fractions, [s.ci_low for s in summaries],
                        [s.ci_high for s in summaries], color=colour,
                        alpha=0.10 if entry.is_reference_point else 0.20, linewidth=0)
        lines += 1
    arrow = "↑" if analysis.direction(task) == "higher" else "↓"
    ax.set_xscale("log")
    shown = analysis.fractions(task)
    if shown:
        ax.set_xticks(shown)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("label fraction (log scale)")
    ax.set_ylabel(f"{analysis.metric(task)} {arrow}")
    ax.set_title(task)
    ax.grid(True, which="both", alpha=0.3)
    return lines


#: share of the figure's width a title or legend may take (the rest is margin)
FIT_SHARE = 0.96


def curves_figure(analysis: Analysis, tasks: Sequence[str] | None = None) -> Figure:
    tasks = list(tasks or [t.id for t in analysis.tasks])
    if not tasks:
        raise BenchError("no task with results to draw")
    cols = min(3, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    # constrained layout keeps the suptitle and the "outside" legend clear of the panels and
    # inside the figure; their widths are fitted below (a long title wraps, the legend takes
    # fewer columns), so nothing is clipped whatever the number of tasks or the label lengths
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows + 0.6), squeeze=False,
                             layout="constrained")
    for ax, task in zip(axes.flat, tasks):
        draw_task(ax, analysis, task)
    for ax in list(axes.flat)[len(tasks):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for ax in axes.flat:  # union of labels over panels
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    _fit_title(fig, f"label-scarcity curves: mean over seeds, band = "
                   f"{analysis.interval_description}")
    _fit_legend(fig, handles, labels, ncol=min(4, len(labels)))
    return fig


def _fit_title(fig: Figure, title: str) -> None:
    """The suptitle, wrapped at word boundaries until it is no wider than the figure."""
    renderer = fig.canvas.get_renderer()
    width = len(title)
    text = fig.suptitle(title, fontsize=10)
    while text.get_window_extent(renderer).width > FIT_SHARE * fig.bbox.width and width > 20:
        width = int(width * 0.85)
        text.set_text(textwrap.fill(title, width))


def _fit_legend(fig: Figure, handles: list, labels: list[str], ncol: int) -> None:
    """The legend under the panels, with as many columns as fit the figure's width (one per
    row at least); a single label wider than the figure widens the figure."""
    renderer = fig.canvas.get_renderer()
    while True:
        legend = fig.legend(handles, labels, loc="outside lower center", ncol=ncol,
                            frameon=False)
        width = legend.get_window_extent(renderer).width
        if width <= FIT_SHARE * fig.bbox.width:
            return
        legend.remove()
        if ncol == 1:
            fig.set_figwidth(fig.get_figwidth() * width / (FIT_SHARE * fig.bbox.width) + 0.1)
        ncol = max(1, ncol - 1)


def write_curves(analysis: Analysis, out_dir: Path, tasks: Sequence[str] | None = None,
                 stem: str = "label_scarcity") -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.svg``; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig = curves_figure(analysis, tasks)
    paths = []
    try:
        for ext in ("png", "svg"):
            path = out_dir / f"{stem}.{ext}"
            tmp = path.with_name(f".{path.name}.tmp")
            fig.savefig(tmp, format=ext, dpi=130)
            tmp.replace(path)
            paths.append(path)
    finally:
        plt.close(fig)
    return paths
