"""Label-scarcity curves: primary metric vs label fraction (log axis), one panel per task.

One line per backbone (mean over seeds) with its 95% bootstrap interval as an error bar at
every fraction and a band between fractions (a run at one fraction still shows its interval).
Random-init entries are drawn dashed with hollow markers and labelled "[random-init]", controls
dotted with hollow squares and labelled "[control]", so neither can pass for a trained encoder
in a figure. Behind them, a grey box at each fraction: the 95% range of the tables' chance row
(the reference's test predictions against shuffled labels); a curve inside it has not shown it
learned anything.
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
from brainbench.leaderboard.analysis import Analysis, Summary  # noqa: E402
from brainbench.leaderboard.tables import CHANCE_ROW  # noqa: E402


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
        means = [s.mean for s in summaries]
        ax.errorbar(fractions, means, yerr=_error_bars(summaries), color=colour, capsize=3,
                    elinewidth=1, label=entry.display, **style)
        ax.fill_between(fractions, [s.ci_low for s in summaries],
                        [s.ci_high for s in summaries], color=colour,
                        alpha=0.10 if entry.is_reference_point else 0.20, linewidth=0)
        lines += 1
    _draw_chance(ax, analysis, task)
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


def _error_bars(summaries: Sequence[Summary]) -> list[list[float]]:
    """Distances from each mean down and up to its interval's ends (0 where an end is missing
    or, for a skewed statistic, on the mean's wrong side)."""
    def gap(value: float) -> float:
        return value if math.isfinite(value) and value > 0 else 0.0

    return [[gap(s.mean - s.ci_low) for s in summaries],
            [gap(s.ci_high - s.mean) for s in summaries]]


#: a chance box spans each fraction from f / this to f x this on the log axis
CHANCE_BOX_HALF_WIDTH = 1.2


def _draw_chance(ax, analysis: Analysis, task: str) -> None:
    """The chance row at each fraction as a grey box (its 95% range) with a dotted line at its
    mean, behind the curves, where the task's metric can be recomputed from predictions."""
    shown = [(f, analysis.chance(task, f)) for f in analysis.fractions(task)]
    for i, (fraction, chance) in enumerate((f, c) for f, c in shown if c is not None):
        left, right = fraction / CHANCE_BOX_HALF_WIDTH, fraction * CHANCE_BOX_HALF_WIDTH
        ax.fill_between([left, right], [chance.ci_low] * 2, [chance.ci_high] * 2,
                        color="grey", alpha=0.22, linewidth=0, zorder=0, gid="chance-range",
                        label=CHANCE_ROW if i == 0 else None)
        ax.hlines(chance.mean, left, right, colors="grey", linestyles=":", linewidth=1.2,
                  zorder=1, gid="chance-mean")


#: share of the figure's width a title or legend may take (the rest is margin)
FIT_SHARE = 0.96


def _has_chance(analysis: Analysis, task: str) -> bool:
    return any(analysis.chance(task, f) is not None for f in analysis.fractions(task))


def curves_title(analysis: Analysis, tasks: Sequence[str] | None = None) -> str:
    """What the figure's marks mean; the grey box is named only where one is drawn."""
    tasks = list(tasks or [t.id for t in analysis.tasks])
    title = (f"label-scarcity curves: mean over seeds, bars and band = "
             f"{analysis.interval_description}")
    if any(_has_chance(analysis, task) for task in tasks):
        title += f"; grey box = {CHANCE_ROW}, 95% range"
    return title


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
    handles, labels = chance_last(handles, labels)
    _fit_title(fig, curves_title(analysis, tasks))
    _fit_legend(fig, handles, labels, ncol=min(4, len(labels)))
    return fig


def chance_last(handles: list, labels: list[str]) -> tuple[list, list[str]]:
    """Legend entries in the order of the backbones, the chance box after them (matplotlib
    lists boxes before error bars)."""
    order = sorted(range(len(labels)), key=lambda i: labels[i] == CHANCE_ROW)
    return [handles[i] for i in order], [labels[i] for i in order]


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
