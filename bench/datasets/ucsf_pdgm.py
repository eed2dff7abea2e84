"""UCSF-PDGM v5: the metadata CSV plus a NIfTI folder per exam (T1, T1c, T2, FLAIR, tumour labels).

IDs are three digits in the CSV (``UCSF-PDGM-004``) and four in the folders (``UCSF-PDGM-0004``):
both are parsed to their integer, and subject ids use the four-digit form.

Follow-up exams: the v5 release has 501 exams of 495 patients; the six second exams carry a
follow-up suffix, ``UCSF-PDGM-0433_FU007d`` in the CSV (four digits there) and
``UCSF-PDGM-0433_FU007d_nifti/UCSF-PDGM-0433_FU007d_T1.nii.gz`` on disk (exam 433, 7 days
later). IDH is a property of the patient and the cohort has one exam per patient: each patient's
baseline exam (``group == id == UCSF-PDGM-0433``); follow-up exams are set aside and counted in
the notes.

IDH is free text: ``wildtype``, or a mutation (``mutated (NOS)``, ``IDH1 p.R132H``,
``IDH2 p.R172K``, ...; also ``mutant ...``): every mutation is ``mutant``.
"""

from __future__ import annotations

import re
from pathlib import Path

from brainbench.errors import BenchError
from brainbench.subjects import Cohort, Subject

from ._common import (counted, find_contrasts, find_image, finish, key_rows, listed, locate,
                      register_adapter, require_dir)
from ._tables import Row, Table, is_missing, parse_code, parse_float, parse_int, read_table

NAME = "ucsf_pdgm"
TITLE = "UCSF-PDGM"
FOLDER = "UCSF-PDGM"
LABEL_FILE = "UCSF-PDGM-metadata_v5.csv"
IMAGE_DIR = "UCSF-PDGM-v5"
EXPECTED_TREE = f"""\
UCSF-PDGM/
  {LABEL_FILE}   (ID like UCSF-PDGM-004, or UCSF-PDGM-0433_FU007d for a follow-up exam;
                              Sex, Age at MRI, WHO CNS Grade, IDH (wildtype / mutated (NOS) / IDH1 p.R132H ...),
                              1-dead 0-alive, OS, ...)
  {IMAGE_DIR}/
    UCSF-PDGM-0004_nifti/
      UCSF-PDGM-0004_T1.nii.gz
      UCSF-PDGM-0004_T1c.nii.gz
      UCSF-PDGM-0004_T2.nii.gz
      UCSF-PDGM-0004_FLAIR.nii.gz
      UCSF-PDGM-0004_tumor_segmentation.nii.gz
    ..."""

REQUIRED = ("ID", "Sex", "Age at MRI", "WHO CNS Grade", "IDH", "1-dead 0-alive", "OS")
ID = re.compile(r"^UCSF-PDGM-(\d+)(?:_(FU\d+d))?$", re.IGNORECASE)
FOLDER_ID = re.compile(r"^UCSF-PDGM-(\d+)(?:_(FU\d+d))?_nifti$", re.IGNORECASE)
MUTATION = re.compile(r"^(mutant|mutated)\b|^idh[12]\s+p\.", re.IGNORECASE)
MODALITIES = {"t1": "T1", "t1c": "T1c", "t2": "T2", "flair": "FLAIR"}
SEX = {"M": "M", "F": "F", "Male": "M", "Female": "F"}
EVENT = {"1": True, "0": False}


def canonical(num: int) -> str:
    return f"UCSF-PDGM-{num:04d}"


def exam_id(key: tuple[int, str | None]) -> str:
    """``UCSF-PDGM-0433`` (baseline) or ``UCSF-PDGM-0433_FU007d`` (follow-up)."""
    num, follow_up = key
    return canonical(num) + (f"_{follow_up}" if follow_up else "")


def _key(m: re.Match) -> tuple[int, str | None]:
    """(exam number, follow-up tag ``FU007d`` or None) of an ID or folder name."""
    return int(m.group(1)), (f"FU{m.group(2)[2:-1]}d" if m.group(2) else None)


def _idh(table: Table, row: Row) -> str | None:
    raw = row["IDH"]
    if is_missing(raw):
        return None
    low = raw.strip().lower()
    if low in ("wildtype", "wild type", "wild-type"):
        return "wildtype"
    if MUTATION.match(low):
        return "mutant"
    raise BenchError(
        f"unknown code {raw!r} in {table.where(row, 'IDH')}; valid codes: 'wildtype', or a mutation: "
        f"'mutated (NOS)', 'IDH1 p.R132H' / 'IDH2 p.R172K' (any 'IDH1 p.' / 'IDH2 p.' variant), 'mutant ...'"
    )


def read(root: Path) -> Cohort:
    folder = locate(root, folder=FOLDER, title=TITLE, expected_tree=EXPECTED_TREE, markers=(LABEL_FILE,))
    table = read_table(folder / LABEL_FILE, REQUIRED, expected_tree=EXPECTED_TREE)
    image_root = require_dir(folder / IMAGE_DIR, TITLE, EXPECTED_TREE)
    exam_dirs: dict[tuple[int, str | None], Path] = {}
    for p in sorted(image_root.iterdir()):
        m = FOLDER_ID.match(p.name)
        if m and p.is_dir():
            exam_dirs.setdefault(_key(m), p)

    def exam_key(row: Row) -> tuple[int, str | None] | None:
        raw = row["ID"]
        if is_missing(raw):
            return None
        m = ID.match(raw.strip())
        if not m:
            raise BenchError(f"cannot parse exam id {raw!r} in {table.where(row, 'ID')} (expected "
                             "UCSF-PDGM-004, or a follow-up exam like UCSF-PDGM-0433_FU007d)")
        return _key(m)

    # an ID written with 3 or 4 digits names the same exam: repeats compare the other columns
    keyed = key_rows(table, exam_key, drop_conflicts=True, ignore=("ID",))
    rows = keyed.rows

    subjects: list[Subject] = []
    no_image, incomplete, no_seg, no_idh, follow_ups = [], [], [], [], []
    for key, row in rows.items():
        if row is None:
            continue
        sid = exam_id(key)
        if key[1] is not None:  # one exam per patient: the baseline (IDH is the patient's)
            follow_ups.append(sid)
            continue
        idh = _idh(table, row)
        event = parse_code(table, row, "1-dead 0-alive", EVENT, valid_text="1 (dead), 0 (alive)")
        os_days = parse_float(table, row, "OS", what="overall survival (days)")
        age = parse_float(table, row, "Age at MRI", what="age")
        sex = parse_code(table, row, "Sex", SEX)
        grade = parse_int(table, row, "WHO CNS Grade", what="WHO CNS grade")
        exam = exam_dirs.get(key)
        if exam is None:
            no_image.append(sid)
            continue
        prefix = exam.name[: -len("_nifti")]
        images, absent = find_contrasts(exam, MODALITIES, f"{prefix}_", f"{sid}_")
        if absent:
            incomplete.append(f"{sid} (no {', '.join(absent)})")
            continue
        seg = find_image(exam, f"{prefix}_tumor_segmentation", f"{sid}_tumor_segmentation")
        if seg is None:
            no_seg.append(sid)
        if idh is None:
            no_idh.append(sid)
        subjects.append(
            Subject(
                id=sid,
                group=sid,
                images=images,
                targets={"idh": idh, "os_days": os_days, "event": event, "seg": seg},
                meta={"sex": sex, "age": age, "grade": grade},
            )
        )

    kept = {s.id for s in subjects}
    without_baseline = sorted({f.split("_")[0] for f in follow_ups} - kept)
    unlisted = [exam_id(k) for k in sorted(exam_dirs, key=lambda k: (k[0], k[1] or "")) if k not in rows]
    same, different = ([exam_id(k) for k in keyed.repeated(identical=i)] for i in (True, False))
    notes = [
        counted(follow_ups, "follow-up exam(s) set aside: each patient's baseline exam is used (IDH "
                            "is the patient's)"),
        counted(without_baseline, "patient(s) with a follow-up exam but no usable baseline exam, not in "
                                  "the cohort"),
        listed(same, "exam id repeated with identical rows, one kept"),
        listed(different, "exam id repeated with different rows, dropped"),
        counted(no_image, "row(s) without an image folder skipped"),
        counted(incomplete, "exam(s) without all four contrasts skipped", n=3),
        counted(no_seg, "exam(s) without tumor_segmentation (targets['seg'] is None)"),
        counted(no_idh, "exam(s) with IDH missing (targets['idh'] is None)"),
        counted(unlisted, f"exam folder(s) without a row in {LABEL_FILE} ignored"),
    ]
    return finish(NAME, TITLE, folder, subjects, notes, EXPECTED_TREE)


# how the dataset's own folder is recognised under any name (brainbench.datasets.locations)
SIGNATURE = (LABEL_FILE, "UCSF-PDGM-v5/UCSF-PDGM-*_nifti/UCSF-PDGM-*_T1.nii*")

ADAPTER = register_adapter(NAME, TITLE, FOLDER, EXPECTED_TREE, read, signature=SIGNATURE)
