"""Time per fitted head, per head type and label fraction, on the default profile's shapes.

Shapes of the `cpu` profile: d = 768 (ViT-B), 16 slices per volume, ~64 subjects in a task's
training pool (80 phantom people, 20% test). Features are synthetic with a planted signal (the
timing does not depend on their values); every fit runs the protocol exactly as the runner does,
search included. Prints a table and an estimate of the full label-scarcity sweep (8 probe
endpoints x 6 fractions x 5 seeds) per protocol.

    .venv/bin/python scripts/head_timing.py --trials 20 [--protocols paper,linear]
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
from sksurv.util import Surv
from tabulate import tabulate

from brainbench.protocols import get_protocol
from brainbench.search import DEFAULT_TRIALS, fit_protocol
from brainbench.taskspec import DEFAULT_FRACTIONS, DEFAULT_SEEDS

POOL, SLICES, DIM = 64, 16, 768
# endpoints by kind among the 8 probe tasks (classification: 5 incl. 3/4-class ones)
TASK_KINDS = {"classification": 5, "regression": 2, "survival": 1}


def data(kind: str, n: int, modalities: int, attention: bool, seed: int):
    rng = np.random.default_rng(seed)
    tokens = rng.standard_normal((n, modalities, SLICES, DIM)).astype(np.float32)
    signal = rng.uniform(0, 1, n)
    tokens[:, :, 3, 0] += 3 * signal[:, None]
    X = tokens if attention else tokens.mean(axis=(1, 2))
    if kind == "classification":
        y = np.where(signal > 0.5, "a", "b")
        y[:2] = ["a", "b"]
    elif kind == "regression":
        y = np.expm1(1 + 4 * signal)
    else:
        t = rng.exponential(np.exp(-2 * signal) * 300)
        y = Surv.from_arrays(event=np.r_[True, True, rng.uniform(size=n - 2) < 0.8], time=t)
    return X, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--protocols", default="linear,knn,paper,attention")
    parser.add_argument("--trials", type=int, default=DEFAULT_TRIALS)
    parser.add_argument("--fractions", default=",".join(map(str, DEFAULT_FRACTIONS)))
    parser.add_argument("--modalities", type=int, default=1, help="modalities per sample")
    args = parser.parse_args()
    fractions = [float(f) for f in args.fractions.split(",")]
    rows, sweep = [], {}
    for name in args.protocols.split(","):
        protocol = get_protocol(name)
        total = 0.0
        for kind, n_tasks in TASK_KINDS.items():
            for fraction in fractions:
                n = max(4, math.ceil(fraction * POOL))
                X, y = data(kind, n, args.modalities, protocol.aggregation == "attention", 0)
                started = time.perf_counter()
                fitted = fit_protocol(protocol, kind, X, y, seed=0, trials=args.trials,
                                      target_transform="log1p" if kind == "regression" else None)
                seconds = time.perf_counter() - started
                total += seconds * n_tasks * len(DEFAULT_SEEDS)
                how = "fallback" if fitted.info.selection.startswith("fallback") else (
                    "optuna" if protocol.searched else "inner CV")
                rows.append([name, kind, fraction, n, how, f"{seconds:.2f}"])
        sweep[name] = total
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; trials "
          f"{args.trials}; d={DIM}, {SLICES} slices, training pool {POOL}")
    print(tabulate(rows, headers=["protocol", "kind", "fraction", "n train", "selection",
                                  "s / fit"]))
    print()
    print(tabulate([[k, f"{v:.0f}", f"{v / 60:.1f}"] for k, v in sweep.items()],
                   headers=["protocol", "sweep s (8 endpoints x 6 fractions x 5 seeds, est.)",
                            "min"]))


if __name__ == "__main__":
    main()
