"""ATLAS R2.0: BIDS T1w images in MNI space with a manual lesion mask, plus the metadata CSV.

The target is days post stroke; the lesion mask is kept in ``targets["lesion"]`` (None if the
mask file is absent). The site is the ``R###`` folder the subject sits in.

The metadata is read from ``ATLAS_2.0_MetaData.csv``, a dated CSV export
(``20220425_ATLAS_2.0_MetaData.csv``), or the spreadsheet the release ships,
``20220425_ATLAS_2.0_MetaData.xlsx`` (first sheet; reading .xlsx needs the ``openpyxl`` package,
and without it the error says so and how to export the sheet to CSV instead).
"""

from __future__ import annotations

import re
from pathlib import Path

from brainbench.errors import BenchError
from brainbench.subjects import Cohort, Subject

from ._common import (counted, find_image, finish, key_rows, layout_error, listed, locate, register_adapter,
                      require_dir)
from ._tables import is_missing, parse_float, read_table

NAME = "atlas2"
TITLE = "ATLAS R2.0"
FOLDER = "ATLAS_2"
LABEL_FILE = "ATLAS_2.0_MetaData.csv"
SPACE = "space-MNI152NLin2009aSym"
EXPECTED_TREE = f"""\
ATLAS_2/
  {LABEL_FILE}   (Subject ID, Site, Session, Days Post Stroke, Lesion Hemisphere, Age, Sex;
                          or the release's 20220425_ATLAS_2.0_MetaData.xlsx, which needs openpyxl)
  Training/
    R001/
      sub-r001s001/ses-1/anat/
        sub-r001s001_ses-1_{SPACE}_T1w.nii.gz
        sub-r001s001_ses-1_{SPACE}_label-L_desc-T1lesion_mask.nii.gz
    ..."""

REQUIRED = ("Subject ID", "Session", "Days Post Stroke", "Lesion Hemisphere")
SUBJECT = re.compile(r"^(?:sub-)?(r\d+s\d+)$", re.IGNORECASE)


SPREADSHEET = "*ATLAS_2.0_MetaData*.xlsx"


def _label_file(folder: Path) -> Path:
    exact = folder / LABEL_FILE
    if exact.is_file():
        return exact
    # releases prefix the file with a date (e.g. 20220425_ATLAS_2.0_MetaData.csv)
    dated = sorted(folder.glob("*ATLAS_2.0_MetaData*.csv"))
    if dated:
        return dated[0]
    # the release ships the metadata as a spreadsheet: 20220425_ATLAS_2.0_MetaData.xlsx
    sheets = sorted(p for p in folder.glob(SPREADSHEET) if not p.name.startswith("~$"))
    if sheets:
        _require_xlsx_reader(sheets[0], folder)
        return sheets[0]
    raise layout_error(TITLE, f"missing metadata {exact} (nor a dated *ATLAS_2.0_MetaData*.csv, nor the "
                              "release's *ATLAS_2.0_MetaData*.xlsx spreadsheet)", EXPECTED_TREE)


def _require_xlsx_reader(sheet: Path, folder: Path) -> None:
    try:
        import openpyxl  # noqa: F401  (pandas reads .xlsx with it)
    except ImportError:
        raise BenchError(
            f"{TITLE}: the metadata is the spreadsheet {sheet}, and reading .xlsx needs the openpyxl "
            f"package, which is not installed: install it (pip install openpyxl), or export the sheet "
            f"to CSV as {folder / LABEL_FILE}") from None


def _subject_id(raw: str) -> str:
    m = SUBJECT.match(raw.strip())
    return f"sub-{m.group(1).lower()}" if m else raw.strip()


def _session(raw: str) -> str:
    raw = raw.strip()
    if is_missing(raw):
        return "ses-1"
    return raw if raw.startswith("ses-") else f"ses-{raw.removesuffix('.0')}"


def read(root: Path) -> Cohort:
    folder = locate(root, folder=FOLDER, title=TITLE, expected_tree=EXPECTED_TREE,
                    alt_folders=("ATLAS_R2.0", "ATLAS_2.0"),
                    looks_like=lambda p: any(p.glob("*ATLAS_2.0_MetaData*.csv")) or any(p.glob(SPREADSHEET)))
    label = _label_file(folder)
    table = read_table(label, REQUIRED, expected_tree=EXPECTED_TREE)
    training = require_dir(folder / "Training", TITLE, EXPECTED_TREE, what="image folder")
    subject_dirs = {p.name: p for p in sorted(training.glob("*/sub-*")) if p.is_dir()}

    keyed = key_rows(table, lambda row: _subject_id(row["Subject ID"]) or None, drop_conflicts=True)
    rows = keyed.rows

    subjects: list[Subject] = []
    no_image, no_days, no_mask = [], [], []
    for sid, row in rows.items():
        if row is None:
            continue
        days = parse_float(table, row, "Days Post Stroke", what="days post stroke")
        ses = _session(row["Session"])
        sub_dir = subject_dirs.get(sid)
        anat = sub_dir / ses / "anat" if sub_dir is not None else None
        t1 = find_image(anat, f"{sid}_{ses}_{SPACE}_T1w") if anat is not None else None
        if t1 is None:
            no_image.append(sid)
            continue
        if days is None:
            no_days.append(sid)
            continue
        mask = find_image(anat, f"{sid}_{ses}_{SPACE}_label-L_desc-T1lesion_mask")
        if mask is None:
            no_mask.append(sid)
        hemi = row["Lesion Hemisphere"]
        subjects.append(
            Subject(
                id=sid,
                group=sid,
                images={"t1": t1},
                targets={"days": days, "lesion": mask},
                meta={"site": sub_dir.parent.name, "hemisphere": None if is_missing(hemi) else hemi},
            )
        )

    unlisted = sorted(s for s in subject_dirs if s not in rows)
    notes = [
        f"metadata read from {label.name}" if label.name != LABEL_FILE else "",
        listed(keyed.repeated(identical=True), "Subject ID repeated with identical rows, one kept"),
        listed(keyed.repeated(identical=False), "Subject ID repeated with different rows, dropped"),
        counted(no_image, "row(s) without a T1w image skipped"),
        counted(no_days, "subject(s) without Days Post Stroke skipped"),
        counted(no_mask, "subject(s) without a lesion mask (targets['lesion'] is None)"),
        counted(unlisted, f"subject folder(s) without a row in {label.name} ignored"),
    ]
    return finish(NAME, TITLE, folder, subjects, notes, EXPECTED_TREE)


# how the dataset's own folder is recognised under any name (brainbench.datasets.locations)
SIGNATURE = ("*ATLAS_2.0_MetaData*.csv", SPREADSHEET, "Training/R*/sub-r*s*/ses-1/anat/*_T1w.nii*")

ADAPTER = register_adapter(NAME, TITLE, FOLDER, EXPECTED_TREE, read, signature=SIGNATURE)
