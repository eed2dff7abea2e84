"""Public entry point: write phantom cohorts in the real datasets' layouts, once, atomically.

Why atomic: a cohort is built in a temporary sibling folder and moved into place with
``os.replace``, so an interrupted run never leaves a half-written dataset, and ``_phantom.json``
(written last) says what a finished root holds so a second call returns at once.

Ground truth: ``root/_truth/<dataset>.csv``, one row per person-visit (every scan, plus label-file
rows without an image), never inside a dataset folder. Columns always present: ``key`` (the
dataset's scan/row id: ``BraTS2021_00000``, ``{PTID}_{VISCODE}``, ABIDE ``SUB_ID``, ``IXI002``,
``sub-r001s001``, ``UCSF-PDGM-004``, ``UPENN-GBM-00001_11``), ``subject_id`` (the person),
``has_image``, ``in_table``, ``quirk``, ``image`` (path of the first image, relative to the dataset
folder), ``age``, ``sex``, ``site``; then latent covariates (severity, mtl_loss, frontal_gm, idh_mutant,
true_survival_days, days, tempo, ...) and measured ones (gm_fraction, mtl_gm_change, wmh_ml,
vol_label{1,2,4}_ml, stage_*, lesion_ml, ...).

CLI: ``python -m brainbench.phantoms.generate --root DIR --n N [--seed S] [--workers W]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from brainbench.phantoms.cohorts import PHANTOMS, finalize, plan_cohort
from brainbench.phantoms.layouts import FOLDERS
from brainbench.phantoms.render import init_worker, render_scan
from brainbench.phantoms.specs import CohortPlan
from brainbench.phantoms.template import load_template

PHANTOM_VERSION = "1.1"  # 1.1: BraTS sites vary their protocols more; a larger ABIDE effect
DATASETS = tuple(PHANTOMS)
MANIFEST = "_phantom.json"
TRUTH_DIR = "_truth"

log = logging.getLogger(__name__)


def _resolve_sizes(n_subjects: int | dict[str, int], datasets: Sequence[str]) -> dict[str, int]:
    """Persons per dataset. A dict also selects datasets: those requested and present in it."""
    unknown = [d for d in datasets if d not in DATASETS]
    if isinstance(n_subjects, dict):
        unknown += [d for d in n_subjects if d not in DATASETS]
    if unknown:
        raise ValueError(f"unknown phantom dataset(s) {unknown}; known: {list(DATASETS)}")
    if isinstance(n_subjects, dict):
        sizes = {d: int(n_subjects[d]) for d in DATASETS if d in datasets and d in n_subjects}
    else:
        sizes = {d: int(n_subjects) for d in DATASETS if d in datasets}
    bad = {d: n for d, n in sizes.items() if n < 1}
    if bad:
        raise ValueError(f"n_subjects must be >= 1 per dataset, got {bad}")
    return sizes


def _manifest_problem(manifest: Any) -> str | None:
    """What is wrong with a parsed ``_phantom.json`` (None: the shape this module writes)."""
    if not isinstance(manifest, dict):
        return f"expected a JSON object, found {type(manifest).__name__} {manifest!r:.60}"
    sizes = manifest.get("sizes", {})
    if not isinstance(sizes, dict) or not all(
            isinstance(n, int) and not isinstance(n, bool) for n in sizes.values()):
        return f"field 'sizes' must map datasets to people counts, found {sizes!r:.60}"
    datasets = manifest.get("datasets", {})
    if not isinstance(datasets, dict) or not all(isinstance(v, dict) for v in datasets.values()):
        return f"field 'datasets' must map datasets to objects, found {datasets!r:.60}"
    seed = manifest.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        return f"field 'seed' must be an integer, found {seed!r:.60}"
    return None


def _read_manifest(root: Path) -> dict[str, Any]:
    """The manifest of ``root``; {} where there is none. A damaged one is only a record of a
    cache: like an unreadable one it counts as none (the cohorts it describes are generated
    again, byte for byte the same), with a warning naming the file."""
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        problem = f"unreadable: {exc}"
    else:
        problem = _manifest_problem(manifest)
        if problem is None:
            return manifest
    log.warning("phantom manifest %s is malformed (%s); generating the cohorts it describes "
                "again", path, problem)
    return {}


def _is_done(root: Path, manifest: dict[str, Any], dataset: str, n: int, seed: int) -> bool:
    if manifest.get("version") != PHANTOM_VERSION or manifest.get("seed") != seed:
        return False
    if manifest.get("sizes", {}).get(dataset) != n:
        return False
    return (root / FOLDERS[dataset]).is_dir() and (root / TRUTH_DIR / f"{dataset}.csv").is_file()


def _truth_frame(plan: CohortPlan) -> pd.DataFrame:
    """One row per person-visit (scan or label-file row), latent covariates and measurements."""
    rows = []
    for r in plan.records:
        if r.quirk.startswith("duplicate"):
            continue
        row: dict[str, Any] = {"key": r.key, "has_image": r.scan is not None, "in_table": r.in_table,
                               "quirk": r.quirk,
                               "image": r.scan.images[0][1] if r.scan is not None else ""}
        for k, v in r.fields.items():
            row[k] = v.isoformat() if hasattr(v, "isoformat") else v
        if r.scan is not None:
            a = r.scan.anatomy
            row.update(head_scale=a.head_scale, ageing_rate=a.ageing_rate, mtl_loss=a.mtl_loss,
                       parietal_loss=a.parietal_loss, frontal_gm=a.frontal_gm,
                       field_t=r.scan.protocol.field_t, snr=r.scan.protocol.snr * r.scan.snr_jitter)
            if r.scan.tumour is not None:
                tu = r.scan.tumour
                row.update(tumour_x_mm=tu.centre_mm[0], tumour_y_mm=tu.centre_mm[1], tumour_z_mm=tu.centre_mm[2],
                           tumour_radius_mm=tu.radius_mm, tumour_rim_mm=tu.rim_mm,
                           tumour_core=tu.core if tu.rim_mm == 0 else "necrotic",
                           enhancing_focus=tu.enhancing_focus)
        row.update({k: v for k, v in r.stats.items() if k not in ("seconds", "cpu_seconds")})
        rows.append(row)
    return pd.DataFrame(rows)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _install(tmp: Path, final: Path) -> None:
    """Move a finished folder into place, replacing an older one without a half state."""
    if final.exists():
        trash = final.with_name(f".{final.name}.old.{os.getpid()}")
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)


#: what a generation stages under the root (and TRUTH_DIR) while it runs, named by its pid:
#: ``.<folder>.tmp.<pid>``, ``.<folder>.old.<pid>``, ``.<file>.<pid>.tmp``
_STAGING = re.compile(r"^\..+\.(?:tmp|old)\.(\d+)$|^\..+\.(\d+)\.tmp$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # this process: a generation still running in another thread
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OSError:
        return False
    return True


def remove_stale_staging(root: Path) -> list[Path]:
    """Remove what a killed generation (its pid no longer alive) left staged under ``root``;
    returns what was removed. Staging of a live process is left alone."""
    removed = []
    for folder in (Path(root), Path(root) / TRUTH_DIR):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            match = _STAGING.match(entry.name)
            if match is None or _pid_alive(int(match.group(1) or match.group(2))):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def generate_phantoms(root: Path, n_subjects: int | dict[str, int], seed: int = 0,
                      workers: int | None = None, datasets: Sequence[str] = DATASETS,
                      progress: bool = True) -> Path:
    """Generate (once) phantom cohorts under ``root``; returns ``root``.

    n_subjects counts persons per dataset (an int for all, or {dataset: n}, which also selects
    the datasets); visits/sessions and quirk rows come on top. Same seed -> byte-identical files,
    whatever the number of worker processes (None: one per available core).
    """
    if workers is None:
        from brainbench.device import available_cores

        workers = available_cores()
    t_start = time.perf_counter()
    root = Path(root)
    sizes = _resolve_sizes(n_subjects, datasets)
    manifest = _read_manifest(root)
    todo = [d for d, n in sizes.items() if not _is_done(root, manifest, d, n, seed)]
    remove_stale_staging(root)
    if not todo:
        return root
    root.mkdir(parents=True, exist_ok=True)
    (root / TRUTH_DIR).mkdir(exist_ok=True)
    keep = manifest.get("version") == PHANTOM_VERSION and manifest.get("seed") == seed
    old_sizes = {d: n for d, n in manifest.get("sizes", {}).items() if d not in todo} if keep else {}
    old_details = {d: v for d, v in manifest.get("datasets", {}).items() if d not in todo} if keep else {}
    if manifest:  # forget what is about to be replaced before touching it (crash safety)
        _atomic_write_text(root / MANIFEST, json.dumps({**manifest, "version": PHANTOM_VERSION, "seed": seed,
                                                        "sizes": old_sizes, "datasets": old_details},
                                                       indent=2, sort_keys=True))

    from brainbench.progress import progress_bar

    # The template load and the cohort plans take seconds at a thousand people: a bar of their
    # own, closed before any worker is forked (no tqdm monitor thread at fork time).
    with progress_bar(total=1 + len(todo), desc="phantoms: template and cohort plans",
                      unit="step", delay=2.0, enabled=progress) as planning:
        t0 = time.perf_counter()
        template = load_template()
        template_s = time.perf_counter() - t0
        planning.update(1)
        plans = {}
        for d in todo:
            plans[d] = plan_cohort(d, sizes[d], seed, template)
            planning.update(1)
    tmp_dirs = {d: root / f".{FOLDERS[d]}.tmp.{os.getpid()}" for d in todo}
    jobs = [(d, s) for d in todo for s in plans[d].scans]
    stats: dict[tuple[str, str], dict] = {}
    bar = None

    def _bar():
        # one step per scan rendered, then one per dataset written (tables, truth, install)
        if not progress:
            return None
        return progress_bar(total=len(jobs) + len(todo), desc="phantoms", unit="step",
                            log_delay=0.0, leave=True)  # a line per dataset written, even in a log

    try:
        for d in todo:
            shutil.rmtree(tmp_dirs[d], ignore_errors=True)
            tmp_dirs[d].mkdir(parents=True)
        if workers <= 1:
            init_worker(template)
            bar = _bar()
            for d, s in jobs:
                ds, key, st = render_scan(s, tmp_dirs[d])
                stats[(ds, key)] = st
                if bar is not None:
                    bar.update(1)
        else:
            ex = ProcessPoolExecutor(max_workers=workers, initializer=init_worker, initargs=(template,))
            try:
                futures = [ex.submit(render_scan, s, str(tmp_dirs[d])) for d, s in jobs]
                bar = _bar()  # after the workers exist: no tqdm monitor thread at fork time
                for fut in as_completed(futures):
                    ds, key, st = fut.result()
                    stats[(ds, key)] = st
                    if bar is not None:
                        bar.update(1)
            except BaseException:
                # do not finish a doomed cohort; no worker outlives an interruption
                workers_alive = list((getattr(ex, "_processes", None) or {}).values())
                ex.shutdown(wait=False, cancel_futures=True)
                for proc in workers_alive:
                    proc.terminate()
                for proc in workers_alive:
                    proc.join(5)
                raise
            ex.shutdown(wait=True)
        per_dataset: dict[str, dict[str, Any]] = {}
        for d in todo:
            if bar is not None:
                bar.set_postfix_str(f"writing {d}")
            plan = plans[d]
            for r in plan.records:
                if r.scan is not None:
                    r.stats = stats[(d, r.scan.scan_id)]
            finalize(plan, seed)
            write_table = PHANTOMS[d].write_table
            if write_table is not None:
                write_table(tmp_dirs[d], plan.records)
            truth = _truth_frame(plan)
            truth_tmp = root / TRUTH_DIR / f".{d}.csv.{os.getpid()}.tmp"
            truth.to_csv(truth_tmp, index=False)
            _install(tmp_dirs[d], root / FOLDERS[d])
            os.replace(truth_tmp, root / TRUTH_DIR / f"{d}.csv")
            secs = [stats[(d, s.scan_id)]["seconds"] for s in plan.scans]
            cpu = [stats[(d, s.scan_id)]["cpu_seconds"] for s in plan.scans]
            per_dataset[d] = {"n_subjects": sizes[d], "n_scans": len(secs),
                              "seconds_per_scan": round(sum(secs) / max(len(secs), 1), 4),
                              "cpu_seconds_per_scan": round(sum(cpu) / max(len(cpu), 1), 4)}
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        for p in tmp_dirs.values():
            if p.exists():
                shutil.rmtree(p, ignore_errors=True)
        for d in todo:  # a truth table staged but not yet moved into place
            (root / TRUTH_DIR / f".{d}.csv.{os.getpid()}.tmp").unlink(missing_ok=True)

    new = {
        "version": PHANTOM_VERSION,
        "seed": seed,
        "sizes": {**old_sizes, **sizes},
        "datasets": {**old_details, **per_dataset},
        "template_seconds": round(template_s, 3),
        "seconds": round(time.perf_counter() - t_start, 3),
        "workers": workers,
    }
    _atomic_write_text(root / MANIFEST, json.dumps(new, indent=2, sort_keys=True))
    return root


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m brainbench.phantoms.generate", description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--n", type=int, default=10, help="persons per dataset")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None,
                   help="render processes (default: one per available core, at most 16)")
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma list")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    root = generate_phantoms(a.root, a.n, seed=a.seed, workers=a.workers,
                             datasets=[d for d in a.datasets.split(",") if d], progress=not a.no_progress)
    wall = time.perf_counter() - t0
    m = _read_manifest(root)
    print(f"phantoms v{m.get('version')} seed {m.get('seed')} in {root} ({wall:.1f} s wall, "
          f"template {m.get('template_seconds')} s, workers {a.workers})")
    for d, info in sorted(m.get("datasets", {}).items()):
        print(f"  {d:<10} persons {info['n_subjects']:>4}  scans {info['n_scans']:>4}  "
              f"{info['seconds_per_scan']:.2f} s/scan wall, {info['cpu_seconds_per_scan']:.2f} s/scan CPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
