"""Comparison tables from the results store: tasks x metrics down, backbones across.

Every backbone column that used random-init weights says so in its header, and the table
carries a footnote explaining what that means: nobody should mistake an untrained
architecture's numbers for a trained encoder's. Protocols and search budgets are part of the
column (``{linear}``, ``{paper[20 trials]}``): cells of different protocols or budgets are never
averaged together.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from tabulate import tabulate

from brainbench.errors import BenchError
from brainbench.metrics import PRIMARY_METRIC_DIRECTION
from brainbench.protocols import budget_of, is_searched, protocol_label
from brainbench.taskspec import TaskSpec

UNVERIFIED_MEANING = ("UNVERIFIED = imported results (brainbench import) whose provenance "
                      "could not all be checked against the predictions, the split manifest "
                      "or the weights")
UNVERIFIED_NOTE = (UNVERIFIED_MEANING
                   + "; the unchecked fields are listed on the site's task pages.")
RANDOM_NOTE = ("RANDOM-INIT = the backbone ran without trained weights (none configured or a "
               "deliberate reference point); its numbers measure the untrained architecture.")
SURVIVAL_NOTE = ("Survival: the paired tests are for Harrell's C; Uno's C and the log-rank p "
                 "get intervals in the survival table of `brainbench table`, recomputed from "
                 "each cell's test predictions and the training reference it stored at fit "
                 "time (cells stored before that show none).")
SURVIVAL_SECONDARY_NOTE = (
    "Uno's C: IPCW concordance with the censoring distribution of the training subset, "
    "truncated at its longest follow-up; log-rank p: test people split at the training "
    "subset's median risk. Mean over seeds [the table's two-level bootstrap interval]; the "
    "interval of a p-value shows how stable the separation is, not a test.")
CHANCE_ROW = "chance (shuffled labels)"
CHANCE_NOTE = ("chance (shuffled labels) = the reference row's (else the first row's) test "
               "predictions scored against test labels permuted across samples (200 "
               "permutations per seed): mean and "
               "95% range of what a row scores with no signal. A row inside that range has "
               "not shown it learned anything.")
CONTROL_NOTE = ("CONTROL = a reference point without learned weights by design: `intensity` "
                "(hand-crafted intensity histograms and brain-size proxies: what a task gives "
                "away without representation learning) and `oracle` (phantoms only: the latent "
                "ground truth that generated each image, the ceiling an encoder could reach).")


def column_label(backbone: str, weights_status: str, weights_id: str,
                 unverified: bool = False) -> str:
    """A backbone column's header: its flags ride in the name, never only in a footnote."""
    marker = {"random-init": " [RANDOM-INIT]", "control": " [CONTROL]"}.get(weights_status, "")
    marker += " [UNVERIFIED]" if unverified else ""
    return f"{backbone}{marker} ({weights_id.split(':')[-1][:8]})"


def unverified_columns(frame: pd.DataFrame) -> dict[tuple[str, str], list[str]]:
    """(backbone, weights_id) -> the provenance fields its imported cells could not verify
    (brainbench.results_io), for the weights with any such cell."""
    from brainbench.results_io import unverified_fields

    if "hyperparameters" not in frame:
        return {}
    found: dict[tuple[str, str], set[str]] = {}
    for key, hyper in zip(zip(frame["backbone"], frame["weights_id"]), frame["hyperparameters"]):
        fields_ = unverified_fields(hyper)
        if fields_:
            found.setdefault(key, set()).update(fields_)
    return {key: sorted(fields_) for key, fields_ in found.items()}


def recovered_budgets(frame: pd.DataFrame) -> pd.Series:
    """Each row's optuna trial budget (None: not searched, or not recoverable).

    The budget is the row's ``hyperparameters["trials"]``. Rows of older stores that lack it
    (fallback cells) take the budget of the cells sharing their config hash, which covers the
    budget.
    """
    hyper = frame["hyperparameters"] if "hyperparameters" in frame else \
        pd.Series(None, index=frame.index, dtype=object)
    budgets = [budget_of(h) for h in hyper]
    if "config_hash" in frame:
        known: dict[str, set[int]] = {}
        for config, budget in zip(frame["config_hash"], budgets):
            if budget is not None:
                known.setdefault(config, set()).add(budget)
        budgets = [next(iter(known[c])) if b is None and len(known.get(c, ())) == 1 else b
                   for c, b in zip(frame["config_hash"], budgets)]
    return pd.Series(budgets, index=frame.index, dtype=object)


def protocol_labels(frame: pd.DataFrame) -> pd.Series:
    """Each row's protocol label: ``linear``, ``paper[20 trials]``, ... (see
    `recovered_budgets`). A searched protocol whose budget no row of its config hash records
    says ``?`` and names the config hash, so unknown budgets still never share a label."""
    if "head" not in frame:
        return pd.Series("", index=frame.index, dtype=object)
    configs = frame["config_hash"].astype(str) if "config_hash" in frame else None
    labels = []
    for i, (head, budget) in enumerate(zip(frame["head"].astype(str), recovered_budgets(frame))):
        label = protocol_label(head, trials=budget)
        if budget is None and is_searched(head) and configs is not None:
            label = f"{head}[? trials, config {configs.iloc[i][:8]}]"
        labels.append(label)
    return pd.Series(labels, index=frame.index, dtype=object)


#: what a comparison-table row shows apart when the selection holds several (`summarise`)
SETTING_COLUMNS = ("profile", "data_source")


def summarise(frame: pd.DataFrame, tasks: Sequence[TaskSpec]) -> pd.DataFrame:
    """mean +- sd over seeds per (task, metric, fraction, backbone column), and per profile /
    data source when the frame holds several (the ``setting`` column; "" otherwise)."""
    wanted = {t.id: (t.primary_metric, *t.secondary_metrics) for t in tasks}
    keep = frame[[metric in wanted.get(task, ()) for task, metric
                  in zip(frame["task"], frame["metric"])]].copy()
    if keep.empty:
        return pd.DataFrame()
    unverified = unverified_columns(keep)  # one imported cell marks its whole column
    keep["column"] = [column_label(b, s, w, (b, w) in unverified) for b, s, w in
                      keep[["backbone", "weights_status", "weights_id"]].itertuples(index=False)]
    if "head" in keep:  # protocols and budgets side by side, never pooled
        keep["protocol"] = protocol_labels(keep)
        budgeted = (keep["protocol"] != keep["head"].astype(str)).any()  # searched: show budget
        if keep["protocol"].nunique() > 1 or budgeted:
            keep["column"] = [f"{c} {{{p}}}" for c, p in zip(keep["column"], keep["protocol"])]
    # stores before schema 4 hold NULL: every earlier run was fp32 (brainbench.store)
    keep["precision"] = (keep["precision"].fillna("fp32").astype(str) if "precision" in keep
                         else "fp32")
    # bf16 and fp32 cells are different cells, never pooled: a column holding both for one task
    # and fraction becomes a column per precision (PRECISION=auto alone may differ by task)
    both = keep.groupby(["column", "task", "fraction"])["precision"].nunique()
    mixed = {column for (column, _, _), n in both.items() if n > 1}
    keep["column"] = [f"{c} {p}" if c in mixed else c
                      for c, p in zip(keep["column"], keep["precision"])]
    # cells of different profiles or data sources answer different questions: rows apart
    varying = [c for c in SETTING_COLUMNS if c in keep and keep[c].nunique() > 1]
    keep["setting"] = [" / ".join(map(str, v)) for v in keep[varying].itertuples(index=False)] \
        if varying else ""
    if {"created_at", "cell_id"} <= set(keep):  # a re-run under a new config (another
        # runtime, a changed task) replaces, for display, the older cell of the same setting,
        # as in the statistics tables: every metric row of the latest cell, none of the older
        latest = keep.sort_values("created_at", kind="stable").drop_duplicates(
            ["column", "setting", "task", "dataset", "fraction", "seed"], keep="last")
        keep = keep[keep["cell_id"].isin(set(latest["cell_id"]))]
    selection = keep["selection"] if "selection" in keep else pd.Series("", index=keep.index)
    keep["fallback"] = selection.fillna("").str.startswith("fallback")
    if "contaminated" not in keep:  # set by comparison_table from declared pretraining data
        keep["contaminated"] = False
    grouped = keep.groupby(["task", "dataset", "setting", "metric", "fraction", "column"])
    summary = grouped.agg(mean=("value", "mean"), sd=("value", "std"), seeds=("seed", "nunique"),
                          n_train=("n_train", "mean"), n_train_min=("n_train", "min"),
                          n_train_max=("n_train", "max"), n_test=("n_test", "max"),
                          fallback_seeds=("fallback", "sum"),
                          contaminated=("contaminated", "any"),
                          precision=("precision", "first")).reset_index()
    return summary


def cell_text(mean: float, sd: float, seeds: int, fallback_seeds: int = 0) -> str:
    """One table cell: mean ± sd over seeds (k seeds), †n for n fallback seeds."""
    if pd.isna(mean):
        return "n/a"
    if float(mean).is_integer() and (pd.isna(sd) or sd == 0) and abs(mean) >= 1000:
        return f"{int(mean):,}"  # counts such as head/backbone parameters, identical per seed
    spread = "" if pd.isna(sd) else f" ± {sd:.3f}"
    marker = f" †{int(fallback_seeds)}" if fallback_seeds else ""
    return f"{mean:.3f}{spread} (k={seeds}){marker}"


def _precision_note(summary: pd.DataFrame) -> str:
    """Each column's feature precision, and the tasks and fractions where it differs (the
    tasks' precision rules under PRECISION=auto)."""
    parts = []
    for column, part in summary.groupby("column"):
        counts = part["precision"].value_counts()
        main = str(counts.index[0])
        others = part[part["precision"] != main].drop_duplicates(["task", "fraction"])
        exceptions = ", ".join(f"{p} for {t} at {f:g}" for p, t, f in
                               zip(others["precision"], others["task"], others["fraction"]))
        parts.append(f"{column}: {main}" + (f" ({exceptions})" if exceptions else ""))
    return ("Feature precision (brainbench.precision; bf16 and fp32 cells are never pooled: a "
            "column run in both for a task gets a column per precision): " + "; ".join(parts))


def detectable_note(store, frame: pd.DataFrame, tasks: Sequence[TaskSpec], split: str = ""
                    ) -> str | None:
    """What difference the comparison table's test sets can detect: the minimum detectable
    difference of `make table`'s paired test (alpha 0.05, power 0.8) per task, from the
    statistics' reference entry (the first pretrained backbone, else the first) at each
    fraction; a range over fractions when there are several."""
    from brainbench.leaderboard.analysis import load_analysis

    if frame.empty:
        return None
    if frame["profile"].nunique() > 1 or frame["data_source"].nunique() > 1:
        return ("Minimum detectable differences: per profile and data source, see `make table "
                "PROFILE=...` (these rows mix several).")
    present = set(frame["task"])
    try:
        analysis = load_analysis(store, models=sorted(set(frame["backbone"])),
                                 tasks=[t.id for t in tasks if t.id in present],
                                 fractions=sorted(set(frame["fraction"])),
                                 profile=frame["profile"].iloc[0],
                                 data_source=frame["data_source"].iloc[0], split=split)
    except BenchError as exc:
        return f"Minimum detectable differences not computed: {exc}"
    found: dict[str, list[tuple[float, int]]] = {}
    for fraction in analysis.fractions():
        for task, value in analysis.detectable_differences(fraction).items():
            found.setdefault(task, []).append(value)
    if not found:
        return None
    parts = []
    for task, values in found.items():
        finite = [m for m, _ in values if np.isfinite(m)]
        others = sorted({_mdd_text(m) for m, _ in values if not np.isfinite(m)})
        ends = sorted({f"{min(finite):.3g}", f"{max(finite):.3g}"}, key=float) if finite else []
        shown = "-".join(ends) if finite else "; ".join(others)  # one figure if ends round alike
        if finite and others:
            shown += f" ({'; '.join(others)} at some fractions)"
        people = "/".join(str(n) for n in sorted({n for _, n in values}))
        parts.append(f"{task} {analysis.metric(task)} {shown} ({people} test people)")
    reference = analysis.reference or analysis.entries[0]
    return ("Minimum detectable difference of the paired test (alpha 0.05, power 0.8; from "
            f"{reference.display}'s test predictions"
            + (", range over the fractions" if len(analysis.fractions()) > 1 else "") + "): "
            + "; ".join(parts) + ". Smaller true differences are likely to go unmarked; "
            "intervals and paired tests: `make table`.")


def comparison_table(frame: pd.DataFrame, tasks: Sequence[TaskSpec], fmt: str = "simple",
                     pending: Sequence[TaskSpec] = (), pretraining: Mapping | None = None,
                     hide_contaminated: bool = False) -> str:
    """``pretraining``: backbone -> declared pretraining data
    (brainbench.analyses.contamination.lookup); cells on a dataset it declares are marked ‡,
    or dropped with ``hide_contaminated``."""
    from brainbench.analyses.contamination import (CONTAMINATED_NOTE, HIDDEN_NOTE, MARK,
                                                   contaminated, unknown_note)

    pretraining = pretraining or {}
    if not frame.empty:
        frame = frame.assign(contaminated=[
            status == "pretrained" and contaminated(pretraining, b, d) for b, d, status in
            zip(frame["backbone"], frame["dataset"], frame["weights_status"])])
    hidden = 0
    if hide_contaminated and not frame.empty:
        hidden = int(frame.drop_duplicates("cell_id")["contaminated"].sum()) \
            if "cell_id" in frame else int(frame["contaminated"].sum())
        frame = frame[~frame["contaminated"]]
    summary = summarise(frame, tasks)
    order = {t.id: i for i, t in enumerate(tasks)}
    primary = {t.id: t.primary_metric for t in tasks}
    columns = sorted(summary["column"].unique()) if not summary.empty else []
    rows = []
    several = not summary.empty and (summary["setting"] != "").any()
    if not summary.empty:
        keys = summary[["task", "dataset", "setting", "metric", "fraction"]].drop_duplicates()
        keys = keys.assign(_o=[order[t] for t in keys["task"]],
                           _p=[m != primary[t] for t, m in zip(keys["task"], keys["metric"])])
        for key in keys.sort_values(["_o", "dataset", "setting", "fraction", "_p", "metric"]
                                    ).itertuples(index=False):
            part = summary[(summary.task == key.task) & (summary.dataset == key.dataset)
                           & (summary.setting == key.setting)
                           & (summary.metric == key.metric) & (summary.fraction == key.fraction)]
            direction = PRIMARY_METRIC_DIRECTION.get(key.metric, "")
            arrow = {"higher": " ↑", "lower": " ↓"}.get(direction, "")
            metric = f"{key.metric}{arrow}" + (" *" if key.metric == primary[key.task] else "")
            cells = {r.column: cell_text(r.mean, r.sd, r.seeds, r.fallback_seeds)
                     + (f" {MARK}" if r.contaminated else "") for r in part.itertuples()}
            low, high = part.n_train_min.min(), part.n_train_max.max()
            trained = f"{low:.0f}" if low == high else f"{low:.0f}-{high:.0f}"  # seeds differ
            sizes = f"{trained} / {part.n_test.max():.0f}"
            rows.append([key.task, key.dataset] + ([key.setting] if several else [])
                        + [metric, f"{key.fraction:g}"]
                        + [cells.get(c, "") for c in columns] + [sizes])
    for task in pending:
        rows.append([task.id, task.dataset] + (["-"] if several else [])
                    + [task.primary_metric, "-"]
                    + [f"PENDING: {task.pending_reason}"] * max(len(columns), 1)
                    + ["-"])
    setting = [" / ".join(c.replace("_", " ") for c in SETTING_COLUMNS if c in frame
                          and frame[c].nunique() > 1)] if several else []
    headers = ["task", "dataset"] + setting + ["metric", "fraction"] + (columns or ["result"]) \
        + ["n train / n test"]
    table = tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True)
    notes = ["* primary metric; values are mean ± sd over seeds (k = number of seeds). n train "
             "/ n test count samples (scans), a range where the seeds' training subsets differ "
             "in size (people with several scans)."]
    if not summary.empty:
        notes.append(_precision_note(summary))
    if not summary.empty and summary["fallback_seeds"].any():
        notes.append("†n = n of the k seeds used a fixed-default fallback: the label-fraction "
                     "subset was too small for inner selection (the row's `selection` says why).")
    if any("RANDOM-INIT" in c for c in columns):
        notes.append(RANDOM_NOTE)
    if any("[CONTROL]" in c for c in columns):
        notes.append(CONTROL_NOTE)
    unverified = unverified_columns(frame) if any("[UNVERIFIED]" in c for c in columns) else {}
    if unverified:
        notes.append(UNVERIFIED_MEANING + "; not verified: " + "; ".join(
            f"{b} ({w.split(':')[-1][:8]}): {', '.join(f)}"
            for (b, w), f in sorted(unverified.items())) + ".")
    if not summary.empty and summary["contaminated"].any():
        notes.append(CONTAMINATED_NOTE)
    if hidden:
        notes.append(HIDDEN_NOTE.format(n=hidden))
    unknown = unknown_note(pretraining, set(frame.loc[frame["weights_status"] == "pretrained",
                                                      "backbone"]) if not frame.empty else ())
    if unknown:
        notes.append(unknown)
    return table + "\n" + "\n".join(notes)


# --------------------------------------------------------------------------- statistical tables
# Rows backbones, columns tasks, one label fraction: mean over seeds with the subject-level
# bootstrap interval, the best per column marked, and wins/losses against the reference
# (paired bootstrap, Holm-adjusted across the table's tasks).

MARKS = {"markdown": {"win": " ▲", "loss": " ▼", "ref": " (ref)"},
         "latex": {"win": r"\textsuperscript{$\blacktriangle$}",
                   "loss": r"\textsuperscript{$\blacktriangledown$}",
                   "ref": r" (ref)"}}
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(c, c) for c in str(text))


def markdown_escape(text: str) -> str:
    """Names from the store are text: no raw HTML, no column breaks in a Markdown table."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") \
        .replace("|", "\\|")


def _fmt_interval(mean: float, low: float, high: float) -> str:
    if pd.isna(low):
        return f"{mean:.3f}"
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def best_entries(analysis, task: str, fraction: float) -> set:
    """Entries with the best mean on ``task`` at ``fraction`` (ties all count)."""
    means = {e: s.mean for e in analysis.entries
             if (s := analysis.summary(e, task, fraction)) is not None}
    if not means:
        return set()
    pick = max if analysis.direction(task) == "higher" else min
    best = pick(means.values())
    return {e for e, m in means.items() if m == best}


def stats_table_rows(analysis, fraction: float, fmt: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows (strings) of the statistical comparison table in ``fmt``."""
    latex = fmt == "latex"
    esc = latex_escape if latex else markdown_escape
    bold = (lambda s: rf"\textbf{{{s}}}") if latex else (lambda s: f"**{s}**")
    tasks = [t.id for t in analysis.tasks]
    comparisons = analysis.comparisons(fraction, tasks)
    ranks = analysis.mean_ranks(fraction)
    headers = ["backbone", "weights"]
    for task in tasks:
        arrow = "↑" if analysis.direction(task) == "higher" else "↓"
        arrow = {"↑": r"$\uparrow$", "↓": r"$\downarrow$"}[arrow] if latex else arrow
        headers.append(f"{esc(task)} {esc(analysis.metric(task))} {arrow}")
    headers.append(esc("mean rank [95% CI]"))
    rows = []
    for entry in analysis.entries:
        weights = ("RANDOM-INIT" if entry.is_random else "CONTROL" if entry.is_control
                   else "pretrained")
        if entry.is_unverified:
            weights += ", UNVERIFIED"
        row = [esc(entry.display), weights]
        for task in tasks:
            summary = analysis.summary(entry, task, fraction)
            if summary is None:
                row.append("–" if not latex else "--")
                continue
            text = _fmt_interval(summary.mean, summary.ci_low, summary.ci_high)
            if entry in best_entries(analysis, task, fraction):
                text = bold(text)
            verdict = comparisons.get((entry, task))
            if verdict is not None and verdict.verdict in ("win", "loss", "ref"):
                text += MARKS["latex" if latex else "markdown"][verdict.verdict]
            if analysis.is_contaminated(entry, task):  # brainbench.analyses.contamination
                text += r" \textsuperscript{\ddag}" if latex else " ‡"
            row.append(text)
        rank = ranks.get(entry)
        row.append(f"{rank.mean_rank:.2f} [{rank.ci[0]:.2f}, {rank.ci[1]:.2f}]" if rank
                   else "--" if latex else "–")
        rows.append(row)
    chance = [analysis.chance(task, fraction) for task in tasks]
    if any(c is not None for c in chance):
        rows.append([esc(CHANCE_ROW), "CONTROL"]
                    + [_fmt_interval(c.mean, c.ci_low, c.ci_high) if c is not None
                       else "--" if latex else "–" for c in chance]
                    + ["--" if latex else "–"])
    return headers, rows


def precision_note(analysis, fraction: float | None = None) -> str:
    """Each row's feature precision(s) at ``fraction`` (None: every fraction), in words."""
    def described(by_task: dict[str, set[str]]) -> str:
        shown = {task: "+".join(sorted(found)) for task, found in by_task.items()}
        main = max(sorted(set(shown.values())), key=list(shown.values()).count)
        others = sorted({value for value in shown.values() if value != main})
        return main + "".join(
            f" ({value} for {', '.join(t for t, v in sorted(shown.items()) if v == value)})"
            for value in others)

    return ("Feature precision (brainbench.precision; bf16 and fp32 cells are different cells, "
            "never pooled: a backbone with both for one task and fraction has a row per "
            "precision): " + "; ".join(f"{name} {described(by_task)}" for name, by_task
                                       in analysis.task_precisions(fraction).items()) + ".")


def protocol_note(analysis) -> str | None:
    """Which probe protocol (and search budget) the rows are, in words."""
    protocols = analysis.protocols
    if len(protocols) == 1:
        return f"Probe protocol: {protocols[0]}."
    if protocols:
        return (f"Probe protocols: {', '.join(protocols)}; each (backbone, protocol / search "
                "budget) is its own row, never pooled with another.")
    return None


#: a minimum detectable difference that is NaN: the reference's bootstrap replicates are all
#: equal (its metric at a bound on every resample), so their spread says nothing
NOT_ESTIMABLE = "not estimable (the reference's bootstrap replicates do not vary)"


def _mdd_text(mdd: float) -> str:
    return (f"{mdd:.3g}" if np.isfinite(mdd) else NOT_ESTIMABLE if np.isnan(mdd)
            else "none within its range")


def detectable_text(mdd: float, people: int) -> str:
    """One task's minimum detectable difference as every table states it."""
    return f"{_mdd_text(mdd)} ({people} test people)"


def summary_notes(store, frame: pd.DataFrame, summary: pd.DataFrame,
                  tasks: Sequence[TaskSpec]) -> list[str]:
    """The precision and minimum-detectable-difference notes of `brainbench results`, for a
    table built from ``summarise(frame, tasks)`` elsewhere (a submission's SUMMARY.md)."""
    notes = [_precision_note(summary)] if not summary.empty else []
    detectable = detectable_note(store, frame, tasks)
    return notes + ([detectable] if detectable else [])


def stats_table_notes(analysis, fraction: float) -> list[str]:
    ref = analysis.reference.display if analysis.reference else None
    notes = [f"Label fraction {fraction:g}. Cells: mean of the primary metric over seeds "
             f"[{analysis.interval_description}]; bold = best in the column."]
    detectable = analysis.detectable_differences(fraction)
    if detectable:
        notes.append("Minimum detectable difference of the paired test (alpha 0.05, power 0.8) "
                     "for these test sets: " + "; ".join(
                         f"{task} {analysis.metric(task)} {detectable_text(*value)}"
                         for task, value in detectable.items())
                     + ". Smaller true differences are likely to go unmarked.")
    if analysis.precisions(fraction):
        notes.append(precision_note(analysis, fraction))
    floors = [f"{t.id} {t.min_per_stratum}" for t in analysis.tasks]
    if floors:
        notes.append("Training subsets take max(k, ceil(fraction x n)) people of each label "
                     "stratum (class, event status or target bin); label floor k per task: "
                     + ", ".join(floors) + ".")
    if protocol_note(analysis):
        notes.append(protocol_note(analysis))
    if ref:
        notes.append(f"▲ / ▼: significantly better / worse than the reference {ref} (paired "
                     "bootstrap of the difference on the same resamples, Holm-adjusted "
                     "across this table's tasks, alpha 0.05); unmarked = not significant.")
    notes.append("Mean rank: over the tasks where every row has a result (1 = best), with its "
                 "bootstrap interval.")
    if any(e.is_random for e in analysis.entries):
        notes.append(RANDOM_NOTE)
    if any(e.is_control for e in analysis.entries):
        notes.append(CONTROL_NOTE)
    if any(analysis.chance(t.id, fraction) is not None for t in analysis.tasks):
        notes.append(CHANCE_NOTE)
    if any(getattr(e, "is_unverified", False) for e in analysis.entries):
        notes.append(UNVERIFIED_NOTE)
    if any(t.kind == "survival" for t in analysis.tasks):
        notes.append(SURVIVAL_NOTE)
    notes += analysis.contamination_notes()
    return notes + list(analysis.notes)


MCNEMAR_TITLE = "McNemar (supplementary; classification tasks)"


def mcnemar_note(analysis, fraction: float | None, esc=str) -> str:
    """The McNemar table's note; ``esc`` escapes the reference's name for the output format."""
    ref = esc(analysis.reference.display) if analysis.reference else "the reference"
    where = f", label fraction {fraction:g}" if fraction is not None else ""
    return (f"{MCNEMAR_TITLE}{where}: exact two-sided McNemar test "
            "(binomial on the discordant subjects; hard prediction = the most probable class), "
            f"each seed against the same seed of the reference {ref} (same label subset, same "
            "test subjects). Cells: subjects only this row gets right / only the reference "
            "gets right, summed over seeds; the median p over seeds; seeds with p < 0.05. "
            "Not adjusted for multiplicity; the paired bootstrap above is the primary test.")


def mcnemar_rows(analysis, fraction: float, fmt: str = "markdown"
                 ) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the McNemar table; no rows without a reference or a classification
    task that both the reference and another row have at ``fraction``."""
    esc = latex_escape if fmt == "latex" else markdown_escape
    results = analysis.mcnemar(fraction)
    tasks = [t.id for t in analysis.tasks if any(k[1] == t.id for k in results)]
    if not tasks:
        return [], []
    headers = ["backbone"] + [f"{esc(t)}: only row / only ref right" for t in tasks]
    rows = []
    for entry in analysis.entries:
        if not any((entry, t) in results for t in tasks):
            continue
        cell = (lambda t: latex_escape(results[(entry, t)].summary.text())) if fmt == "latex" \
            else (lambda t: results[(entry, t)].summary.text())  # numbers only: no escaping
        rows.append([esc(entry.display)] + [cell(t) if (entry, t) in results
                                            else ("--" if fmt == "latex" else "–")
                                            for t in tasks])
    return headers, rows


SURVIVAL_TITLE = "Survival secondary metrics (Uno's C, log-rank p)"
SURVIVAL_SECONDARY = ("c_uno", "logrank_p")


def survival_rows(analysis, fraction: float, fmt: str = "markdown"
                  ) -> tuple[list[str], list[list[str]]]:
    """Header and rows of Uno's C and the log-rank p per survival task, each the mean over
    seeds with its two-level interval (recomputed from the cells' stored training
    reference); no rows when no cell stored one."""
    esc = latex_escape if fmt == "latex" else markdown_escape
    dash = "--" if fmt == "latex" else "–"
    tasks = [t.id for t in analysis.tasks if t.kind == "survival"]
    columns = [(t, m) for t in tasks for m in SURVIVAL_SECONDARY]
    rows = []
    for entry in analysis.entries:
        found = [analysis.secondary(entry, t, fraction, m) for t, m in columns]
        if all(f is None for f in found):
            continue
        rows.append([esc(entry.display)] + [dash if f is None else
                                            _fmt_interval(f.mean, f.ci_low, f.ci_high)
                                            for f in found])
    if not rows:
        return [], []
    arrows = {"c_uno": "↑", "logrank_p": "↓"}
    return ["backbone"] + [f"{esc(t)} {m} {arrows[m]}" for t, m in columns], rows


def stats_table(analysis, fraction: float, fmt: str = "markdown") -> str:
    """A Markdown (tabulate github) or LaTeX (tabulate latex_raw) statistical table."""
    if fmt not in ("markdown", "latex"):
        raise ValueError(f"fmt must be 'markdown' or 'latex', got {fmt!r}")
    headers, rows = stats_table_rows(analysis, fraction, fmt)
    tablefmt = "latex_raw" if fmt == "latex" else "github"
    table = tabulate(rows, headers=headers, disable_numparse=True, tablefmt=tablefmt)
    from brainbench.leaderboard.robustness import (ROBUSTNESS_NOTE, ROBUSTNESS_TITLE,
                                                   robustness_rows)

    m_headers, m_rows = mcnemar_rows(analysis, fraction, fmt)  # before the notes: it adds some
    r_headers, r_rows = robustness_rows(analysis, fraction, fmt)
    r_table = tabulate(r_rows, headers=r_headers, disable_numparse=True,
                       tablefmt=tablefmt) if r_rows else ""
    s_headers, s_rows = survival_rows(analysis, fraction, fmt)
    s_table = tabulate(s_rows, headers=s_headers, disable_numparse=True,
                       tablefmt="latex_raw" if fmt == "latex" else "github") if s_rows else ""
    notes = stats_table_notes(analysis, fraction)
    m_table = tabulate(m_rows, headers=m_headers, disable_numparse=True,
                       tablefmt=tablefmt) if m_rows else ""
    if fmt == "latex":
        notes = [latex_escape(n).replace("▲", r"$\blacktriangle$")
                 .replace("▼", r"$\blacktriangledown$") for n in notes]
        text = table + "\n" + "\n".join(f"% {n}" for n in notes) + "\n"
        if m_table:
            text += f"\n{m_table}\n% {latex_escape(mcnemar_note(analysis, fraction))}\n"
        if s_table:
            text += f"\n{s_table}\n% {latex_escape(SURVIVAL_SECONDARY_NOTE)}\n"
        if r_table:
            text += f"\n{r_table}\n% {latex_escape(ROBUSTNESS_NOTE)}\n"
        return text
    text = table + "\n\n" + "\n".join(f"- {markdown_escape(n)}" for n in notes) + "\n"
    if m_table:
        text += (f"\n**{MCNEMAR_TITLE}**\n\n{m_table}\n\n"
                 f"- {mcnemar_note(analysis, fraction, markdown_escape)}\n")
    if s_table:
        text += (f"\n**{SURVIVAL_TITLE}**\n\n{s_table}\n\n"
                 f"- {markdown_escape(SURVIVAL_SECONDARY_NOTE)}\n")
    if r_table:
        text += (f"\n**{ROBUSTNESS_TITLE}**\n\n{r_table}\n\n"
                 f"- {markdown_escape(ROBUSTNESS_NOTE)}\n")
    return text


def write_text_atomic(path, text: str) -> None:
    """Write a text file through a temporary sibling, so no reader sees half a table."""
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
