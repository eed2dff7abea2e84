"""bf16 vs fp32 on a full sweep: every primary metric against the seed-to-seed sd (issue 15).

Why: `auto` runs the encoder in bf16 where the hardware is fast at it, which moves features by
~1e-3 (scripts/precision_fidelity.py). What matters is whether that moves results: bf16 is not
the default for a (task, fraction) where |mean bf16 - mean fp32| over the seeds exceeds
``--threshold`` (0.25) times the fp32 seed-to-seed sd (ddof=1). Cells are paired by (task,
fraction, seed), i.e. the same training subset (subset hashes are checked), so the largest
per-seed |difference| is shown too. Where the fp32 sd is 0 (every seed gave the same value,
e.g. fraction 1 where all seeds train on the whole split) the rule has no scale: the absolute
difference is reported and any difference beyond 1e-9 is flagged "sd 0" on its own.

Cells are read through brainbench's store (standard split only, the task's primary metric,
the latest cell of each setting as the leaderboard shows it). ``--run`` first runs the two
sweeps one after the other (same cache, so both read the same phantoms) and prints their wall
times with the load average.

    .venv/bin/python scripts/precision_sweep.py /work/sweep/fp32 /work/sweep/bf16
    .venv/bin/python scripts/precision_sweep.py --run --out /work/sweep --model braindino \\
        --profile cpu --fraction 0.01,0.05,0.1,0.25,0.5,1
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from brainbench.precision import BF16_SHIFT_LIMIT_SD
from brainbench.store import ResultStore, default_url
from brainbench.taskspec import get_task

PRECISIONS = ("fp32", "bf16")
ZERO = 1e-9  # differences below this count as none (sd-0 pairs)
KEY = ["task", "fraction", "seed"]


def store_url(text: str) -> str:
    """A store URL as given, or the default sqlite store of a results folder."""
    return text if "://" in text else default_url(Path(text))


def primary_cells(url: str, model: str | None) -> pd.DataFrame:
    """One row per (task, fraction, seed): the primary metric of the standard split's cell
    (the latest one where a setting was re-run, as the leaderboard shows it)."""
    frame = ResultStore(url).frame(split="", **({"backbone": model} if model else {}))
    if frame.empty:
        raise SystemExit(f"{url}: no standard-split results{f' for {model}' if model else ''}")
    backbones = sorted(set(frame["backbone"]))
    if len(backbones) > 1:
        raise SystemExit(f"{url} holds backbones {backbones}: choose one with --model")
    primary = {t: get_task(t).primary_metric for t in frame["task"].unique()}
    frame = frame[[m == primary[t] for t, m in zip(frame["task"], frame["metric"])]]
    frame = frame[frame["value"].notna()]
    frame = frame.sort_values("created_at").drop_duplicates(KEY, keep="last")
    return frame[KEY + ["metric", "value", "subset_hash", "split_hash", "precision",
                        "code_version", "created_at"]].reset_index(drop=True)


def compare(fp32: pd.DataFrame, bf16: pd.DataFrame, threshold: float) -> tuple[pd.DataFrame,
                                                                              list[str]]:
    """Per (task, fraction): means, difference, fp32 sd, difference in sd, largest per-seed
    |difference| and the flag; plus notes on cells that could not be paired."""
    notes = []
    for name, frame in (("fp32", fp32), ("bf16", bf16)):
        other = sorted(set(frame["precision"]) - {name})
        if other:
            notes.append(f"the {name} store holds cells computed in {other}")
    pairs = fp32.merge(bf16, on=KEY, suffixes=("_fp32", "_bf16"), how="outer", indicator=True)
    for side, label in (("left_only", "fp32"), ("right_only", "bf16")):
        alone = pairs[pairs["_merge"] == side]
        if len(alone):
            notes.append(f"{len(alone)} cells only in the {label} store (not compared): "
                         + ", ".join(f"{r.task}@{r.fraction:g}/s{r.seed}"
                                     for r in alone.itertuples()))
    pairs = pairs[pairs["_merge"] == "both"]
    differ = pairs[pairs["subset_hash_fp32"] != pairs["subset_hash_bf16"]]
    if len(differ):
        notes.append(f"{len(differ)} pairs trained on different subsets (compared anyway): "
                     + ", ".join(f"{r.task}@{r.fraction:g}/s{r.seed}" for r in differ.itertuples()))
    # config_hash covers the backbone's precision, so it always differs; the test split and
    # the code must not (a shared working tree may change between the two runs)
    for column, what in (("split_hash", "test splits"), ("code_version", "code")):
        other = pairs[pairs[f"{column}_fp32"] != pairs[f"{column}_bf16"]]
        if len(other):
            notes.append(f"{len(other)} pairs ran under different {what} ({column}): tasks "
                         + ", ".join(sorted(set(other["task"]))))
    stored = pd.concat([fp32, bf16]).groupby(["task", "fraction"])["seed"].nunique()
    rows = []
    for (task, fraction), group in pairs.groupby(["task", "fraction"], sort=True):
        a, b = group["value_fp32"].to_numpy(float), group["value_bf16"].to_numpy(float)
        diff = b.mean() - a.mean()
        sd = a.std(ddof=1) if len(a) > 1 else math.nan
        if math.isnan(sd):
            in_sd, flag = math.nan, "n < 2"
        elif sd > ZERO:  # a float-noise sd (1e-16) is 0
            in_sd = diff / sd
            flag = f"> {threshold:g} sd" if abs(in_sd) > threshold else ""
        else:
            in_sd = 0.0 if abs(diff) <= ZERO else math.copysign(math.inf, diff)
            flag = "sd 0" if abs(diff) > ZERO else ""
        if len(a) < stored[(task, fraction)]:  # a run still under way: not judged yet
            flag = f"partial ({len(a)} of {stored[(task, fraction)]} seeds)"
        rows.append({"task": task, "metric": group["metric_fp32"].iloc[0], "fraction": fraction,
                     "seeds": len(a), "fp32 mean": a.mean(), "bf16 mean": b.mean(),
                     "diff": diff, "fp32 sd": sd, "diff / sd": in_sd,
                     "max |seed diff|": float(np.abs(b - a).max()), "flag": flag})
    return pd.DataFrame(rows), notes


def task_times(cells: pd.DataFrame) -> pd.Series:
    """Seconds each task took within its run: from the previous task's last stored cell to
    its own (one run writes the tasks one after another; the first task has no start here, so
    it is left out: it also carries phantom generation and hashing in a cold cache)."""
    done = pd.to_datetime(cells.groupby("task")["created_at"].max()).sort_values()
    return done.diff().dt.total_seconds().iloc[1:]


def timing_table(fp32: pd.DataFrame, bf16: pd.DataFrame) -> pd.DataFrame:
    """Per task, like for like (same phantoms and hashes on disk): fp32 s, bf16 s, ratio."""
    both = pd.concat({"fp32 s": task_times(fp32), "bf16 s": task_times(bf16)}, axis=1).dropna()
    sizes = pd.concat([fp32.groupby("task").size(), bf16.groupby("task").size()], axis=1)
    both = both[both.index.isin(sizes.index[sizes.iloc[:, 0] == sizes.iloc[:, 1]])]  # done
    return both.assign(**{"bf16 / fp32": both["bf16 s"] / both["fp32 s"]})


def run_sweeps(args: argparse.Namespace) -> dict[str, str]:
    """Run the fp32 then the bf16 sweep (never at once: they would share the cores); print
    each wall time with the load average before and after. Returns {precision: folder}."""
    exe = Path(sys.executable).with_name("brainbench")
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "brainbench.cli"]
    out, walls, folders = Path(args.out), {}, {}
    out.mkdir(parents=True, exist_ok=True)
    for precision in PRECISIONS:
        folders[precision] = str(out / precision)
        command = base + ["run", "--model", args.model, "--profile", args.profile,
                          "--fraction", args.fraction, "--precision", precision,
                          "--cache", args.cache or str(out / "cache"),
                          "--results", folders[precision], "--no-progress"]
        before = os.getloadavg()
        print(f"{precision}: {' '.join(command)} > {out / precision}.log  "
              f"(load {before[0]:.2f} {before[1]:.2f} {before[2]:.2f})", flush=True)
        started = time.perf_counter()
        with open(out / f"{precision}.log", "w") as log:
            rc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
        walls[precision] = time.perf_counter() - started
        after = os.getloadavg()
        print(f"{precision}: rc {rc}, wall {walls[precision]:.1f} s  "
              f"(load {after[0]:.2f} {after[1]:.2f} {after[2]:.2f})", flush=True)
        if rc:
            raise SystemExit(f"the {precision} sweep failed: see {out / precision}.log")
    print(f"wall bf16 / fp32: {walls['bf16'] / walls['fp32']:.2f} (the first run also "
          "generates the phantoms unless the cache held them)\n")
    return folders


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("fp32", nargs="?", help="fp32 results folder or store URL")
    p.add_argument("bf16", nargs="?", help="bf16 results folder or store URL")
    p.add_argument("--model", default=None, help="backbone to compare (needed if a store "
                   "holds several; --run: the one to run, default braindino)")
    p.add_argument("--threshold", type=float, default=BF16_SHIFT_LIMIT_SD,
                   help="flag |diff| > this x sd")
    p.add_argument("--csv", default=None, help="also write the comparison table here (the "
                   "task cards' precision rules are checked against tests/fixtures/precision/)")
    p.add_argument("--run", action="store_true", help="run both sweeps first")
    p.add_argument("--out", default="sweep", help="--run: folder for the results and logs")
    p.add_argument("--cache", default=None, help="--run: cache folder (default OUT/cache)")
    p.add_argument("--profile", default="cpu")
    p.add_argument("--fraction", default="0.01,0.05,0.1,0.25,0.5,1")
    args = p.parse_args()
    if args.run:
        args.model = args.model or "braindino"
        folders = run_sweeps(args)
        args.fp32, args.bf16 = folders["fp32"], folders["bf16"]
    elif not (args.fp32 and args.bf16):
        p.error("give the fp32 and bf16 results folders (or store URLs), or --run")
    cells = {p: primary_cells(store_url(path), args.model)
             for p, path in (("fp32", args.fp32), ("bf16", args.bf16))}
    table, notes = compare(cells["fp32"], cells["bf16"], args.threshold)
    if table.empty:
        raise SystemExit("no (task, fraction) has cells in both stores")
    print(tabulate(table, headers="keys", tablefmt="github", showindex=False,
                   floatfmt=("", "", "g", "", ".4f", ".4f", "+.2e", ".4f", "+.3f", ".2e", "")))
    for note in notes:
        print(f"note: {note}")
    if args.csv:
        table.to_csv(args.csv, index=False, float_format="%.6g")
        print(f"wrote {args.csv}")
    times = timing_table(cells["fp32"], cells["bf16"])
    if len(times):
        print("\nper-task time in each run (from stored cell times; first task left out):")
        print(tabulate(times, headers="keys", tablefmt="github",
                       floatfmt=("", ".0f", ".0f", ".2f")))
        print(f"tasks {', '.join(times.index)}: fp32 {times['fp32 s'].sum():.0f} s, bf16 "
              f"{times['bf16 s'].sum():.0f} s, bf16 / fp32 "
              f"{times['bf16 s'].sum() / times['fp32 s'].sum():.2f}")
    over = table[table["flag"].str.startswith(">")]
    zero = table[table["flag"] == "sd 0"]

    def named(rows: pd.DataFrame) -> str:
        return ", ".join(f"{r['task']}@{r['fraction']:g} ({r['diff / sd']:+.2f} sd)"
                         if math.isfinite(r["diff / sd"])
                         else f"{r['task']}@{r['fraction']:g} (diff {r['diff']:+.2e})"
                         for r in rows.to_dict("records"))

    finite = table["diff / sd"].abs().replace(math.inf, np.nan)
    print(f"\n{len(over)} of {len(table)} (task, fraction) pairs move by more than "
          f"{args.threshold:g} fp32 sd under bf16" + (f": {named(over)}" if len(over) else "")
          + f"; {len(zero)} with fp32 sd 0 and a difference beyond {ZERO:g}"
          + (f": {named(zero)}" if len(zero) else "")
          + (f"; largest |diff| / sd {finite.max():.2f}" if finite.notna().any() else ""))


if __name__ == "__main__":
    main()
