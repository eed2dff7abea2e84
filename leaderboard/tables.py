"""Comparison tables from the results store: tasks x metrics down, backbones across.

Every backbone column that used random-init weights says so in its header, and the table
carries a footnote explaining what that means: nobody should mistake an untrained
architecture's numbers for a trained encoder's.
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd
from tabulate import tabulate

from brainbench.metrics import PRIMARY_METRIC_DIRECTION
from brainbench.taskspec import TaskSpec

RANDOM_NOTE = ("RANDOM-INIT = the backbone ran without trained weights (none configured or a "
               "deliberate reference point); its numbers measure the untrained architecture.")


def column_label(backbone: str, weights_status: str, weights_id: str) -> str:
    marker = " [RANDOM-INIT]" if weights_status == "random-init" else ""
    return f"{backbone}{marker} ({weights_id.split(':')[-1][:8]})"


def summarise(frame: pd.DataFrame, tasks: Sequence[TaskSpec]) -> pd.DataFrame:
    """mean +- sd over seeds per (task, metric, fraction, backbone column)."""
    wanted = {t.id: (t.primary_metric, *t.secondary_metrics) for t in tasks}
    keep = frame[[metric in wanted.get(task, ()) for task, metric
                  in zip(frame["task"], frame["metric"])]].copy()
    if keep.empty:
        return pd.DataFrame()
    keep["column"] = [column_label(*r) for r in
                      keep[["backbone", "weights_status", "weights_id"]].itertuples(index=False)]
    grouped = keep.groupby(["task", "dataset", "metric", "fraction", "column"])
    summary = grouped.agg(mean=("value", "mean"), sd=("value", "std"), seeds=("seed", "nunique"),
                          n_train=("n_train", "mean"), n_test=("n_test", "max")).reset_index()
    return summary


def _cell(mean: float, sd: float, seeds: int) -> str:
    if pd.isna(mean):
        return "n/a"
    spread = "" if pd.isna(sd) else f" ± {sd:.3f}"
    return f"{mean:.3f}{spread} (k={seeds})"


def comparison_table(frame: pd.DataFrame, tasks: Sequence[TaskSpec], fmt: str = "simple",
                     pending: Sequence[TaskSpec] = ()) -> str:
    summary = summarise(frame, tasks)
    order = {t.id: i for i, t in enumerate(tasks)}
    primary = {t.id: t.primary_metric for t in tasks}
    columns = sorted(summary["column"].unique()) if not summary.empty else []
    rows = []
    if not summary.empty:
        keys = summary[["task", "dataset", "metric", "fraction"]].drop_duplicates()
        keys = keys.assign(_o=[order[t] for t in keys["task"]],
                           _p=[m != primary[t] for t, m in zip(keys["task"], keys["metric"])])
        for key in keys.sort_values(["_o", "fraction", "_p", "metric"]).itertuples(index=False):
            part = summary[(summary.task == key.task) & (summary.metric == key.metric)
                           & (summary.fraction == key.fraction)]
            direction = PRIMARY_METRIC_DIRECTION.get(key.metric, "")
            arrow = {"higher": " ↑", "lower": " ↓"}.get(direction, "")
            metric = f"{key.metric}{arrow}" + (" *" if key.metric == primary[key.task] else "")
            cells = {r.column: _cell(r.mean, r.sd, r.seeds) for r in part.itertuples()}
            sizes = f"{part.n_train.mean():.0f} / {part.n_test.max():.0f}"
            rows.append([key.task, key.dataset, metric, f"{key.fraction:g}"]
                        + [cells.get(c, "") for c in columns] + [sizes])
    for task in pending:
        rows.append([task.id, task.dataset, task.primary_metric, "-"]
                    + [f"PENDING: {task.pending_reason}"] * max(len(columns), 1)
                    + ["-"])
    headers = ["task", "dataset", "metric", "fraction"] + (columns or ["result"]) + \
        ["n train / n test"]
    table = tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True)
    notes = ["* primary metric; values are mean ± sd over seeds (k = number of seeds)."]
    if any("RANDOM-INIT" in c for c in columns):
        notes.append(RANDOM_NOTE)
    return table + "\n" + "\n".join(notes)
