"""Simulation of the leaderboard's statistics: interval coverage and the paired test's
false-positive rate when two backbones are equally good and training subsets (seeds) vary.

Each replication draws a test set of people (a shared per-person difficulty, so the seeds'
errors correlate as real heads' do), and per backbone k seeds whose head quality varies
(log-normal spread ``tau``); the score is MAE. The truth is the backbone's expected MAE over
seeds and people. Prints coverage of the 95% interval and the rate of p < 0.05 between two
equally good backbones, for the people-only bootstrap and the two-level one.

    python scripts/stats_simulation.py --replications 1000
    python scripts/stats_simulation.py --replications 200 --power 50,100,200,300,400
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from brainbench import stats


def simulate(replications: int, *, people: int = 60, seeds: int = 5, tau: float = 0.15,
             rho: float = 0.8, n_boot: int = 500, resampling: str = "people+seeds",
             seed: int = 0) -> tuple[float, float]:
    """(coverage of the 95% interval, false-positive rate of the paired test at 0.05)."""
    rng = np.random.default_rng(seed)
    truth = math.sqrt(2 / math.pi) * math.exp(tau ** 2 / 2)  # E|error| over seeds and people
    covered = false_positives = 0
    for r in range(replications):
        y = rng.standard_normal(people)
        difficulty = rng.standard_normal(people)
        resample = stats.person_bootstrap([f"p{i}" for i in range(people)], n_boot, seed,
                                          f"sim{r}")

        def backbone() -> tuple[np.ndarray, float]:
            quality = np.exp(rng.normal(0.0, tau, seeds))
            per_seed, points = [], []
            for s in range(seeds):
                noise = rho * difficulty + math.sqrt(1 - rho ** 2) * rng.standard_normal(people)
                scorer = stats.Scorer("regression", "mae", y, y + noise * quality[s])
                per_seed.append(resample.score(scorer))
                points.append(scorer.point())
            return np.array(per_seed), float(np.mean(points))

        (reps_a, point_a), (reps_b, point_b) = backbone(), backbone()
        draws = (stats.seed_draws(seeds, n_boot, seed, f"sim{r}")
                 if resampling == "people+seeds" else None)
        a, b = stats.two_level(reps_a, draws), stats.two_level(reps_b, draws)
        low, high = stats.percentile_interval(a)
        covered += low <= truth <= high
        false_positives += stats.paired_bootstrap(point_a, point_b, a, b).p_value < 0.05
    return covered / replications, false_positives / replications


def simulate_power(replications: int, *, people: int, seeds: int = 5, auc_a: float = 0.76,
                   auc_b: float = 0.66, rho: float = 0.5, tau: float = 0.1, n_boot: int = 300,
                   seed: int = 0) -> float:
    """Power of the table's paired two-level test (alpha 0.05) to find backbone A (true AUC
    ``auc_a``) better than B (``auc_b``) on ``people`` test people (half positive). Binormal
    scores; the two backbones share a per-person nuisance (correlation ``rho``) as real
    encoders of the same images do; each seed's head quality varies (log-normal ``tau``)."""
    from scipy.stats import norm

    rng = np.random.default_rng(seed)
    d_a, d_b = (math.sqrt(2) * norm.ppf(a) for a in (auc_a, auc_b))
    found = 0
    for r in range(replications):
        y = (np.arange(people) % 2).astype(int)
        shared = rng.standard_normal(people)
        resample = stats.person_bootstrap([f"p{i}" for i in range(people)], n_boot, seed,
                                          f"power{r}")

        def backbone(d: float) -> tuple[np.ndarray, float]:
            per_seed, points = [], []
            for q in np.exp(rng.normal(0.0, tau, seeds)):
                score = d * q * y + rho * shared + math.sqrt(1 - rho ** 2) * rng.standard_normal(people)
                p1 = 1.0 / (1.0 + np.exp(-score))
                scorer = stats.Scorer("classification", "auc", y, np.c_[1 - p1, p1])
                per_seed.append(resample.score(scorer))
                points.append(scorer.point())
            return np.array(per_seed), float(np.mean(points))

        (reps_a, point_a), (reps_b, point_b) = backbone(d_a), backbone(d_b)
        draws = stats.seed_draws(seeds, n_boot, seed, f"power{r}")
        test = stats.paired_bootstrap(point_a, point_b, stats.two_level(reps_a, draws),
                                      stats.two_level(reps_b, draws))
        found += test.p_value < 0.05 and test.difference > 0
    return found / replications


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replications", type=int, default=1000)
    parser.add_argument("--people", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--power", type=str, default="",
                        help="comma list of test-set sizes: print the paired test's power for "
                             "AUC 0.76 vs 0.66 at each (instead of coverage)")
    args = parser.parse_args()
    if args.power:
        print(f"{args.replications} replications, {args.seeds} seeds, AUC 0.76 vs 0.66, "
              "shared per-person nuisance rho 0.5, seed spread tau 0.1, two-level paired test")
        print(f"{'test people':>12} {'power':>7}")
        for people in (int(p) for p in args.power.split(",")):
            power = simulate_power(args.replications, people=people, seeds=args.seeds)
            print(f"{people:>12} {power:>7.3f}")
        return
    print(f"{args.replications} replications, {args.people} test people, {args.seeds} seeds, "
          "MAE, per-person difficulty rho 0.8")
    print(f"{'resampling':<14} {'tau':>5} {'coverage':>9} {'false pos':>10}")
    for resampling in stats.RESAMPLING:
        for tau in (0.0, 0.1, 0.15, 0.2, 0.3):
            coverage, fpr = simulate(args.replications, people=args.people, seeds=args.seeds,
                                     tau=tau, resampling=resampling)
            print(f"{resampling:<14} {tau:>5.2f} {coverage:>9.3f} {fpr:>10.3f}")


if __name__ == "__main__":
    main()
