"""Any BIDS dataset with an age column in ``participants.tsv`` (e.g. OpenNeuro ds000228, "Pixar").

One Subject per participant with a T1w image: ``sub-<label>/anat/sub-<label>_T1w.nii.gz``, or with
sessions ``sub-<label>/ses-<s>/anat/sub-<label>_ses-<s>_T1w.nii.gz``. When a participant has
several T1w images (sessions, runs, acquisitions) the first session's (in natural order:
``ses-2`` before ``ses-10``) plainest one is used and the choice is reported:
``participants.tsv`` holds one age per person, which dates one scan only if there is one. The age column is ``age`` in any capitalisation (ds000228 writes ``Age``);
``n/a`` is missing. An optional ``site`` column is kept as a stratum.
"""

from __future__ import annotations

import re
from pathlib import Path

from brainbench.errors import BenchError
from brainbench.subjects import Cohort, Subject

from ._common import counted, finish, listed, locate, register_adapter
from ._tables import is_missing, parse_float, read_table

NAME = "bids"
TITLE = "BIDS participants.tsv (e.g. Pixar ds000228)"
FOLDER = "ds000228"
LABEL_FILE = "participants.tsv"
EXPECTED_TREE = f"""\
ds000228/                  (or any BIDS folder: point DATA or the dataset config at it)
  dataset_description.json
  {LABEL_FILE}       (participant_id, Age (any capitalisation; years; n/a = missing), [Gender/sex], [site])
  sub-pixar001/
    anat/sub-pixar001_T1w.nii.gz
  sub-01/
    ses-1/anat/sub-01_ses-1_T1w.nii.gz      (sessions: the first one is used)
  ..."""

SUBJECT = re.compile(r"^sub-([A-Za-z0-9]+)$")
T1W = re.compile(r"^sub-[A-Za-z0-9]+(_[a-z]+-[A-Za-z0-9]+)*_T1w\.nii(\.gz)?$")


def _column(columns: tuple[str, ...], *names: str) -> str | None:
    lower = {c.lower(): c for c in columns}
    return next((lower[n] for n in names if n in lower), None)


def natural(text: str) -> tuple[tuple[int, int | str], ...]:
    """Numeric-aware sort key: ``ses-2`` before ``ses-10`` (text order puts ``ses-10`` first)."""
    return tuple((0, int(part)) if part.isdigit() else (1, part.lower())
                 for part in re.split(r"(\d+)", text) if part)


def _t1w(subject_dir: Path) -> tuple[Path | None, int]:
    """The first session's plainest T1w (fewest entities), and how many T1w images were found.
    Sessions are in natural order (``ses-2`` before ``ses-10``); no session folder comes first."""
    found = sorted((p for p in subject_dir.glob("**/anat/*_T1w.nii*") if T1W.match(p.name)),
                   key=lambda p: (natural(p.parent.parent.name) if p.parent.parent != subject_dir else (),
                                  p.name.count("_"), natural(p.name)))
    return (found[0] if found else None), len(found)


def read(root: Path) -> Cohort:
    folder = locate(root, folder=FOLDER, title=TITLE, expected_tree=EXPECTED_TREE, markers=(LABEL_FILE,))
    table = read_table(folder / LABEL_FILE, ("participant_id",), expected_tree=EXPECTED_TREE)
    age_col = _column(table.columns, "age")
    if age_col is None:
        raise BenchError(f"label file {table.path} has no age column (looked for 'age' in any "
                         f"capitalisation); columns found: {', '.join(map(repr, table.columns))}")
    sex_col = _column(table.columns, "sex", "gender")
    site_col = _column(table.columns, "site", "site_id", "scanner")
    subject_dirs = {p.name: p for p in sorted(folder.glob("sub-*")) if p.is_dir() and SUBJECT.match(p.name)}

    subjects: list[Subject] = []
    seen: set[str] = set()
    duplicates, no_image, no_age, several = [], [], [], []
    for row in table:
        raw = row["participant_id"].strip()
        if is_missing(raw):
            continue
        sid = raw if raw.startswith("sub-") else f"sub-{raw}"
        if not SUBJECT.match(sid):
            raise BenchError(f"cannot parse participant_id {raw!r} in {table.where(row, 'participant_id')} "
                             "(expected sub-<label>, letters and digits only)")
        if sid in seen:
            duplicates.append(sid)
            continue
        seen.add(sid)
        age = parse_float(table, row, age_col, what="age")
        image, count = _t1w(subject_dirs[sid]) if sid in subject_dirs else (None, 0)
        if image is None:
            no_image.append(sid)
            continue
        if count > 1:
            several.append(f"{sid} ({count})")
        if age is None:
            no_age.append(sid)
        subjects.append(Subject(
            id=sid, group=sid, images={"t1": image}, targets={"age": age},
            meta={"site": (row[site_col] or None) if site_col else None,
                  "sex": (row[sex_col] or None) if sex_col else None},
        ))

    unlisted = sorted(s for s in subject_dirs if s not in seen)
    notes = [
        listed(duplicates, f"participant_id repeated in {LABEL_FILE}, the first row kept"),
        counted(no_image, "participant(s) without a T1w image skipped"),
        counted(no_age, f"participant(s) with {age_col} n/a (targets['age'] is None)"),
        counted(several, "participant(s) with several T1w images, the first session's plainest used"),
        counted(unlisted, f"sub-* folder(s) without a row in {LABEL_FILE} ignored"),
    ]
    return finish(NAME, TITLE, folder, subjects, notes, EXPECTED_TREE)


# how the dataset's own folder is recognised under any name (brainbench.datasets.locations)
SIGNATURE = (LABEL_FILE,)

ADAPTER = register_adapter(NAME, TITLE, FOLDER, EXPECTED_TREE, read, signature=SIGNATURE)
