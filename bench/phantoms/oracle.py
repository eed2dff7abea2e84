"""Learnability check: can a simple model recover each task's label from the latent truth?

Why: a phantom task must be neither trivial nor impossible. Fitting a small scikit-learn model on
the ground-truth covariates in ``_truth/<dataset>.csv`` gives an upper-bound-ish "oracle" score;
the same pipeline on shuffled labels must land at chance. Usage::

    python -m brainbench.phantoms.oracle ROOT
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import mean_absolute_error, roc_auc_score
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from brainbench.errors import BenchError


@dataclass
class OracleRow:
    """One task's learnability: metric on truth covariates, on shuffled labels, and at chance."""

    dataset: str
    target: str
    metric: str
    oracle: float
    shuffled: float
    chance: float
    n: int


@dataclass(frozen=True)
class _Task:
    dataset: str
    target: str
    kind: str  # "auc", "mae", "cindex"
    prepare: Callable[[pd.DataFrame], tuple[np.ndarray, np.ndarray, np.ndarray]]  # X, y, groups
    model: str = "linear"  # or "forest"
    log_target: bool = False


def _imaged(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["has_image"].astype(bool)].reset_index(drop=True)


Covariate = tuple[str, Callable[[pd.DataFrame], np.ndarray]]  # (name, rows -> values)


def _col(name: str) -> list[Covariate]:
    return [(name, lambda d: d[name].astype(float).to_numpy())]


def _log1p(*names: str) -> list[Covariate]:
    return [(f"log1p({'+'.join(names)})",
             lambda d: np.log1p(sum(d[n].astype(float) for n in names)).to_numpy())]


def _onehot(name: str, levels: range) -> list[Covariate]:
    return [(f"{name}={v}", lambda d, v=v: (d[name].astype(str) == str(v)).to_numpy(float))
            for v in levels]


_TUMOUR = [*_log1p("vol_label1_ml"), *_log1p("vol_label2_ml"), *_log1p("vol_label4_ml"),
           *_col("tumour_y_mm"), *_col("age")]

#: The latent truths that generate each phantom dataset's images and labels: what an ideal
#: encoder could read from an image. One declaration for the learnability check below and the
#: `oracle` control backbone (brainbench.baselines.oracle).
COVARIATES: dict[str, list[Covariate]] = {
    "adni": [*_col("mtl_gm_change"), *_col("parietal_gm_change"), *_col("gm_change"),
             *_col("age")],
    "abide1": [*_col("frontal_gm_change"), *_col("age"), *_onehot("site", range(8))],
    "ixi": [*_col("gm_fraction"), *_col("ventricle_ml"), *_col("wmh_ml")],
    "atlas2": [*(c for stage in ("acute", "oedema", "enhance", "cavity", "gliosis", "shrink")
                 for c in _col(f"stage_{stage}")), *_col("lesion_ml")],
    "ucsf_pdgm": _TUMOUR,
    "brats2021": _TUMOUR,
    "upenn_gbm": [*_col("age"), *_col("idh_mutant"), *_log1p("vol_label1_ml", "vol_label4_ml")],
}


def covariate_matrix(dataset: str, rows: pd.DataFrame) -> np.ndarray:
    """(n, k) covariates of ``rows`` of the dataset's truth table."""
    return np.column_stack([values(rows) for _, values in COVARIATES[dataset]])


def _adni(df):
    d = _imaged(df)
    y = d["DX"].map({"CN": 0, "MCI": 1, "Dementia": 2}).to_numpy()
    return covariate_matrix("adni", d), y, d["subject_id"].astype(str).to_numpy()


def _abide(df):
    d = _imaged(df)
    return (covariate_matrix("abide1", d), d["asd"].astype(bool).astype(int).to_numpy(),
            d["subject_id"].astype(str).to_numpy())


def _ixi(df):
    d = _imaged(df)
    return covariate_matrix("ixi", d), d["age"].to_numpy(float), d["subject_id"].astype(str).to_numpy()


def _atlas(df):
    d = _imaged(df)
    return (covariate_matrix("atlas2", d), d["days"].to_numpy(float),
            d["subject_id"].astype(str).to_numpy())


def _ucsf(df):
    d = _imaged(df)
    return (covariate_matrix("ucsf_pdgm", d), d["idh_mutant"].astype(bool).astype(int).to_numpy(),
            d["subject_id"].astype(str).to_numpy())


def _upenn_base(df):
    d = _imaged(df)
    d = d[(d["session"].astype(str) == "11") & ~d["os_missing"].astype(bool)].reset_index(drop=True)
    return d, covariate_matrix("upenn_gbm", d)


def _upenn_1yr(df):
    d, X = _upenn_base(df)
    died = d["event"].astype(bool) & (d["os_days"] <= 365)
    alive = d["os_days"] > 365
    keep = (died | alive).to_numpy()
    return X[keep], died.to_numpy()[keep].astype(int), d["subject_id"].astype(str).to_numpy()[keep]


def _upenn_cox(df):
    d, X = _upenn_base(df)
    y = np.c_[d["os_days"].to_numpy(float), d["event"].astype(bool).to_numpy(float)]
    return X, y, d["subject_id"].astype(str).to_numpy()


TASKS = (
    _Task("adni", "dx (CN/MCI/Dementia)", "auc", _adni),
    _Task("abide1", "asd", "auc", _abide),
    _Task("ixi", "age", "mae", _ixi),
    _Task("atlas2", "days post stroke", "mae", _atlas, model="forest", log_target=True),
    _Task("ucsf_pdgm", "idh mutant", "auc", _ucsf),
    _Task("upenn_gbm", "survival_1yr", "auc", _upenn_1yr),
    _Task("upenn_gbm", "survival (C-index)", "cindex", _upenn_cox),
)


def harrell_c(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's concordance: among comparable pairs, how often higher risk dies first."""
    conc = ties = comparable = 0.0
    for i in np.flatnonzero(event > 0):
        later = time > time[i]
        comparable += later.sum()
        conc += (risk[later] < risk[i]).sum()
        ties += (risk[later] == risk[i]).sum()
    return float((conc + 0.5 * ties) / comparable) if comparable else float("nan")


def _folds(y: np.ndarray, groups: np.ndarray, kind: str, seed: int):
    if kind == "auc":
        counts = np.bincount(y) if len(y) else np.zeros(0, int)
        if (counts > 0).sum() < 2:  # no people, or one class: nothing to cross-validate
            return None
        k = int(min(5, counts[counts > 0].min()))
        if k < 2 or (counts > 0).sum() < 2:
            return None
        return StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(y, y, groups)
    k = int(min(5, len(np.unique(groups))))
    return GroupKFold(n_splits=k).split(y, y, groups) if k >= 2 else None


def _model(task: _Task):
    if task.kind == "auc":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    if task.model == "forest":
        return RandomForestRegressor(n_estimators=150, min_samples_leaf=2, random_state=0, n_jobs=1)
    return make_pipeline(StandardScaler(), Ridge(alpha=1.0))


def _score(task: _Task, X: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Cross-validated (score, chance score) for one labelling. AUC and C-index are averaged
    over folds (pooling out-of-fold scores from different models biases shuffled AUC below 0.5);
    chance for MAE is the training median, the best constant predictor."""
    folds = _folds(y if task.kind == "auc" else np.zeros(len(y), int), groups, task.kind, seed)
    if folds is None:
        return float("nan"), float("nan")
    scores = []
    if task.kind == "auc":
        classes = np.unique(y)
        for tr, te in folds:
            if len(np.unique(y[tr])) < len(classes) or len(np.unique(y[te])) < 2:
                continue
            m = _model(task).fit(X[tr], y[tr])
            p = m.predict_proba(X[te])
            if len(classes) == 2:
                scores.append(roc_auc_score(y[te], p[:, 1]))
            elif len(np.unique(y[te])) == len(classes):
                scores.append(roc_auc_score(y[te], p, multi_class="ovr", average="macro", labels=m.classes_))
        return (float(np.mean(scores)) if scores else float("nan")), 0.5
    if task.kind == "mae":
        pred = np.zeros(len(y))
        base = np.zeros(len(y))
        for tr, te in folds:
            yt = np.log(y[tr]) if task.log_target else y[tr]
            m = _model(task).fit(X[tr], yt)
            p = m.predict(X[te])
            pred[te] = np.exp(p) if task.log_target else p
            base[te] = np.median(y[tr])  # the best constant under MAE
        return float(mean_absolute_error(y, pred)), float(mean_absolute_error(y, base))
    # survival: regress log time on uncensored training rows, risk = minus predicted log time
    time, event = y[:, 0], y[:, 1]
    for tr, te in folds:
        ev = tr[event[tr] > 0]
        if len(ev) < 3:
            continue
        m = _model(task).fit(X[ev], np.log(np.maximum(time[ev], 1.0)))
        c = harrell_c(time[te], event[te], -m.predict(X[te]))
        if np.isfinite(c):
            scores.append(c)
    return (float(np.mean(scores)) if scores else float("nan")), 0.5


N_SHUFFLES = 5
TRUTH_DIR = "_truth"
#: what a truth table is, in messages
WRITTEN_BY = "the truth table `brainbench phantoms` writes"


def read_truth(path: Path, dataset: str, prepare: Callable[[pd.DataFrame], object] | None = None,
               columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """The truth table ``_truth/<dataset>.csv``, checked: readable as CSV, and holding
    ``columns`` and every column ``prepare`` (default: the dataset's covariates) reads. A
    missing column is a BenchError naming the file and every missing column."""
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError,
            ValueError) as exc:
        raise BenchError(f"cannot read phantom truth table {path}: {exc}; expected "
                         f"{WRITTEN_BY} (regenerate the cohort to restore it)") from None
    return check_truth(frame, path, dataset, prepare, columns)


def check_truth(frame: pd.DataFrame, path: Path, dataset: str,
                prepare: Callable[[pd.DataFrame], object] | None = None,
                columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """``frame`` (read from ``path``) if it holds ``columns`` and every column ``prepare``
    (default: the dataset's covariates) reads, else a BenchError naming them all."""
    check = prepare or (lambda rows: covariate_matrix(dataset, rows))
    probe = frame.head(0).copy()  # no rows: only the columns are looked at
    missing = [c for c in columns if c not in probe.columns]
    for name in missing:
        probe[name] = pd.Series(dtype=float)
    while True:
        try:
            check(probe)
            break
        except KeyError as exc:  # pandas names the column it did not find
            name = exc.args[0] if exc.args else None
            if not isinstance(name, str) or name in missing:
                raise
            missing.append(name)
            probe[name] = pd.Series(dtype=float)
    if missing:
        raise BenchError(f"phantom truth table {path}: column(s) {', '.join(map(repr, missing))} "
                         f"missing; expected {WRITTEN_BY} for {dataset}")
    return frame


def _prepared(task: _Task, frame: pd.DataFrame, path: Path):
    try:
        return task.prepare(frame)
    except (ValueError, TypeError) as exc:
        raise BenchError(f"phantom truth table {path}: a value could not be read ({exc}); "
                         f"expected {WRITTEN_BY} for {task.dataset}") from None


def _cohort_root(root: Path) -> None:
    """``root`` must be a phantom cohort folder: one holding ``_truth/<dataset>.csv``."""
    names = sorted({t.dataset for t in TASKS})
    expected = (f"expected a phantom cohort folder holding {TRUTH_DIR}/<dataset>.csv "
                f"(<dataset>: {', '.join(names)}), as `brainbench phantoms` writes under "
                "$BRAINBENCH_CACHE/phantoms/<tag>/")
    if not root.exists():
        raise BenchError(f"ROOT={root}: no such folder; {expected}")
    if not root.is_dir():
        raise BenchError(f"ROOT={root} is a file; {expected}")
    if not any((root / TRUTH_DIR / f"{d}.csv").is_file() for d in names):
        hint = ("; this looks like the truth folder itself: pass the folder above it"
                if any((root / f"{d}.csv").is_file() for d in names) else "")
        raise BenchError(f"ROOT={root} is not a phantom cohort: no {TRUTH_DIR}/<dataset>.csv "
                         f"in it; {expected}{hint}")


def oracle_report(root: Path | str, seed: int = 0) -> list[OracleRow]:
    """Oracle vs shuffled-label scores for every task whose truth file exists under ``root``
    (a folder without any: BenchError, as is a truth table lacking a column a task reads)."""
    root = Path(root)
    _cohort_root(root)
    rows = []
    frames: dict[str, pd.DataFrame] = {}
    for task in TASKS:
        path = root / TRUTH_DIR / f"{task.dataset}.csv"
        if not path.is_file():
            continue
        if task.dataset not in frames:
            frames[task.dataset] = read_truth(path, task.dataset, task.prepare)
        else:  # the columns this task reads too
            check_truth(frames[task.dataset], path, task.dataset, task.prepare)
        X, y, groups = _prepared(task, frames[task.dataset], path)
        score, chance = _score(task, X, y, groups, seed)
        rng = np.random.default_rng(seed)
        scores = np.array([_score(task, X, y[rng.permutation(len(y))], groups, seed)[0]
                           for _ in range(N_SHUFFLES)])
        shuffled = float(np.mean(scores[np.isfinite(scores)])) if np.isfinite(scores).any() \
            else float("nan")
        metric = {"auc": "AUC", "mae": "MAE", "cindex": "C-index"}[task.kind]
        if task.kind == "auc" and len(np.unique(y)) > 2:
            metric = "macro AUC"
        rows.append(OracleRow(task.dataset, task.target, metric, round(score, 3), round(shuffled, 3),
                              round(chance, 3), int(len(y))))
    return rows


#: a score the cohort is too small to cross-validate (a class with under 2 people, one group)
TOO_FEW = "too few people"


def format_report(rows: list[OracleRow]) -> str:
    """The report as a table; a score the cohort is too small to cross-validate says so."""
    from dataclasses import asdict

    from tabulate import tabulate

    shown = [{key: TOO_FEW if isinstance(value, float) and np.isnan(value) else value
              for key, value in asdict(row).items()} for row in rows]
    return tabulate(shown, headers="keys")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m brainbench.phantoms.oracle ROOT", file=sys.stderr)
        return 2
    try:
        print(format_report(oracle_report(Path(argv[0]))))
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
