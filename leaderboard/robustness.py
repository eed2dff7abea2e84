"""Robustness to unseen sites: each task's score on a held-out site beside its in-distribution
score, and the drop between them.

The two scores come from different test people (the standard split's test set, and every
person of the held-out site), so the drop is not a paired difference: its interval is the
percentile interval of the difference of the two analyses' independent two-level bootstrap
replicates (each over seeds and test people). The drop is signed so that a positive drop is
always worse on the unseen site (higher-is-better metrics: in-distribution minus unseen;
MAE: unseen minus in-distribution). The held-out site is part of each cell's split
(``site-held-out:<site>``), so the table names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from brainbench.errors import BenchError
from brainbench.leaderboard.analysis import LEVEL, Analysis, Entry, Summary, load_analysis
from brainbench.leaderboard.tables import _fmt_interval, latex_escape, markdown_escape
from brainbench.stats import percentile_interval
from brainbench.store import ResultStore
from brainbench.taskspec import SiteHeldOut

ROBUSTNESS_TITLE = "Robustness to unseen sites (site-held-out split)"
ROBUSTNESS_NOTE = (
    "Unseen site: the probe trained on the other sites' people (same label fraction, label "
    "floors and seeds) and tested on every person of one held-out site (named per task; "
    "chosen from the cohort as the site closest to the task's test fraction that keeps every "
    "label on both sides). A positive drop means worse on the unseen site; its 95% interval "
    "is the difference of the two scores' independent two-level bootstrap replicates "
    "(different test people, so not a paired test). Train sets differ as well: the drop "
    "measures the whole shift of both train and test, not the test site alone.")


@dataclass(frozen=True)
class SiteDrop:
    entry: Entry  # of the in-distribution analysis
    task: str
    site: str
    in_distribution: Summary
    unseen: Summary
    drop: float
    drop_ci: tuple[float, float]
    people: int  # test people of the held-out site


def _key(entry: Entry) -> tuple[str, str, str, str]:
    return entry.backbone, entry.weights_id, entry.protocol, entry.precision


def held_out_site(analysis: Analysis, entry: Entry, task: str, fraction: float) -> str:
    """The held-out site recorded in the cells' split (``site-held-out:<site>``)."""
    labels = {r.provenance.get("split", "") for r in analysis.records(entry, task, fraction)}
    sites = sorted(label.partition(":")[2] for label in labels)
    if len(sites) != 1:
        raise BenchError(f"{entry.display} on {task} at fraction {fraction:g}: cells of "
                         f"different held-out sites {sites}; re-run them on one split")
    return sites[0]


def _precisions(analysis: Analysis, entry: Entry, task: str, fraction: float) -> set[str]:
    return {r.provenance.get("precision", "fp32") for r in analysis.records(entry, task,
                                                                               fraction)}


def site_drops(analysis: Analysis, unseen: Analysis, fraction: float) -> list[SiteDrop]:
    """Every (entry, task) that has cells at ``fraction`` on both splits, at one precision.
    An entry split by precision in one analysis (both precisions stored there) and not in the
    other is matched task by task on its cells' precision, never pooled across precisions."""
    drops = []
    for entry in analysis.entries:
        arms = [e for e in unseen.entries if _key(e)[:3] == _key(entry)[:3]]
        for task in unseen.tasks:
            if not analysis.has(entry, task.id, fraction):
                continue
            wanted = _precisions(analysis, entry, task.id, fraction)
            other = next((e for e in arms if unseen.has(e, task.id, fraction)
                          and _precisions(unseen, e, task.id, fraction) == wanted), None)
            if other is None:
                continue
            inside = analysis.summary(entry, task.id, fraction)
            outside = unseen.summary(other, task.id, fraction)
            sign = -1.0 if analysis.direction(task.id) == "lower" else 1.0
            diff = sign * (analysis.replicates(entry, task.id, fraction)
                           - unseen.replicates(other, task.id, fraction))
            drops.append(SiteDrop(entry, task.id, held_out_site(unseen, other, task.id, fraction),
                                  inside, outside, sign * (inside.mean - outside.mean),
                                  percentile_interval(diff, LEVEL),
                                  unseen.people(other, task.id, fraction)))
    return drops


def load_unseen_sites(store: ResultStore, models: Sequence[str] | None = None,
                      **selection: Any) -> Analysis | None:
    """The site-held-out analysis of the same selection (``selection``: load_analysis's
    keywords, bar the reference), or None when the store holds no such cells for it."""
    split = SiteHeldOut.name
    frame = store.frame(backbone=list(models) if models else None)
    stored = frame[frame["split"].str.startswith(f"{split}:")]
    if stored.empty:
        return None
    present = [m for m in models if m in set(stored["backbone"])] if models else None
    if models and not present:
        return None
    try:
        return load_analysis(store, models=present, split=split, **selection)
    except BenchError as exc:
        if str(exc).startswith("no results"):  # cells exist, but none for this selection
            return None
        raise


def robustness_rows(analysis: Analysis, fraction: float, fmt: str = "markdown"
                    ) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the unseen-site table; none without site-held-out results."""
    unseen = analysis.unseen_sites
    if unseen is None:
        return [], []
    esc = latex_escape if fmt == "latex" else markdown_escape
    rows = []
    for d in site_drops(analysis, unseen, fraction):
        low, high = d.drop_ci
        ci = (f"{d.drop:.3f} [{low:.3f}, {high:.3f}]" if np.isfinite([low, high]).all()
              else f"{d.drop:.3f}")
        rows.append([esc(d.entry.display), esc(f"{d.task} ({analysis.metric(d.task)})"),
                     _fmt_interval(d.in_distribution.mean, d.in_distribution.ci_low,
                                   d.in_distribution.ci_high),
                     esc(f"{d.site} ({d.people} people)"),
                     _fmt_interval(d.unseen.mean, d.unseen.ci_low, d.unseen.ci_high), ci])
    if not rows:
        return [], []
    return ["backbone", "task", "in-distribution", "held-out site", "unseen site",
            "drop"], rows


__all__ = ["ROBUSTNESS_NOTE", "ROBUSTNESS_TITLE", "SiteDrop", "held_out_site",
           "load_unseen_sites", "robustness_rows", "site_drops"]
