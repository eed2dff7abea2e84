"""IXI: the IXI.xls demographics sheet plus T1 images named IXI<id>-<site>-<nnnn>-T1.nii.gz.

Known quirks of the real sheet, resolved here and reported in ``Cohort.notes``:
duplicate IXI_IDs (identical AGE: one row kept; different AGE: the id is dropped), empty AGE
(derived from STUDY_DATE - DOB when both are present, else the row is dropped), and rows or
images without a counterpart. The acquisition site (Guys, HH, IOP) comes from the file name.

The real sheet's sex header carries its codebook, ``SEX_ID (1=m, 2=f)``: the column is matched
by its leading name. Its coded columns use 0 for "not recorded": SEX_ID 0 is missing. Sex is a
covariate no task needs, so a missing column or an unknown code leaves ``meta["sex"]`` None
(with a note naming the rows) instead of stopping the read.
"""

from __future__ import annotations

import re
from pathlib import Path

from brainbench.subjects import Cohort, Subject

from ._common import counted, finish, layout_error, locate, register_adapter
from ._tables import Row, Table, find_column, is_missing, parse_date, parse_float, parse_int, read_table

NAME = "ixi"
TITLE = "IXI"
FOLDER = "IXI"
LABEL_FILES = ("IXI.xls", "IXI.csv")
SHEET = "Table"
EXPECTED_TREE = """\
IXI/
  IXI.xls                (sheet 'Table': IXI_ID, SEX_ID (1=m, 2=f; 0 = missing), ..., DOB, STUDY_DATE, AGE;
                          or IXI.csv)
  IXI-T1/
    IXI002-Guys-0828-T1.nii.gz
    IXI012-HH-1211-T1.nii.gz
    IXI035-IOP-0873-T1.nii.gz
    ..."""

REQUIRED = ("IXI_ID", "DOB", "STUDY_DATE", "AGE")
SEX_COLUMN = "SEX_ID"  # leading name: the real header is 'SEX_ID (1=m, 2=f)'
SEX = {"1": "M", "2": "F"}
NOT_RECORDED = ("0",)  # the sheet's coded columns use 0 for missing
IMAGE = re.compile(r"^IXI(\d+)-(Guys|HH|IOP)-(\d+)-T1\.nii(\.gz)?$", re.IGNORECASE)
DAYS_PER_YEAR = 365.25
AGE_TOLERANCE = 1e-6


def _images(folder: Path) -> tuple[dict[int, tuple[Path, str]], list[str]]:
    t1_dir = folder / "IXI-T1"
    if not t1_dir.is_dir():
        # the T1 tarball unpacks flat: accept the images directly in the dataset folder
        if any(IMAGE.match(p.name) for p in folder.iterdir()):
            t1_dir = folder
        else:
            raise layout_error(TITLE, f"missing image folder {t1_dir}", EXPECTED_TREE)
    found: dict[int, tuple[Path, str]] = {}
    extra: list[str] = []
    for p in sorted(t1_dir.iterdir()):
        m = IMAGE.match(p.name)
        if not m or not p.is_file():
            continue
        num = int(m.group(1))
        if num in found:
            extra.append(p.name)
            continue
        site = {"guys": "Guys", "hh": "HH", "iop": "IOP"}[m.group(2).lower()]
        found[num] = (p, site)
    return found, extra


def _age(table: Table, row: Row) -> tuple[float | None, bool]:
    """(age, derived?) for one row."""
    age = parse_float(table, row, "AGE", what="age")
    if age is not None:
        return age, False
    dob = parse_date(table, row, "DOB")
    study = parse_date(table, row, "STUDY_DATE")
    if dob is None or study is None:
        return None, False
    return (study - dob).days / DAYS_PER_YEAR, True


def _sex(row: Row, column: str | None) -> tuple[str | None, str]:
    """(M / F / None, why None): "" when known or the column is absent, "missing" for an empty
    cell or 0 (not recorded), "unknown" for any other code (sex is not a target: never fatal)."""
    if column is None:
        return None, ""
    raw = row[column].strip()
    code = raw[:-2] if raw.endswith(".0") else raw
    if is_missing(code, NOT_RECORDED):
        return None, "missing"
    if code in SEX:
        return SEX[code], ""
    return None, "unknown"


def read(root: Path) -> Cohort:
    folder = locate(root, folder=FOLDER, title=TITLE, expected_tree=EXPECTED_TREE, markers=LABEL_FILES)
    label = next((folder / n for n in LABEL_FILES if (folder / n).is_file()), folder / LABEL_FILES[0])
    table = read_table(label, REQUIRED, sheet=SHEET, expected_tree=EXPECTED_TREE)
    sex_column = find_column(table.columns, SEX_COLUMN)
    images, extra_images = _images(folder)

    by_id: dict[int, list[tuple[Row, float | None, bool]]] = {}
    no_id = 0
    for row in table:
        num = parse_int(table, row, "IXI_ID", what="IXI_ID")
        if num is None:
            no_id += 1
            continue
        age, derived = _age(table, row)
        by_id.setdefault(num, []).append((row, age, derived))

    notes = []
    subjects: list[Subject] = []
    no_image, no_age, derived_ids, no_sex, unknown_sex = [], [], [], [], []
    for num in sorted(by_id):
        entries = by_id[num]
        sid = f"IXI{num:03d}"
        with_age = [e for e in entries if e[1] is not None]
        if not with_age:
            no_age.append(sid)
            continue
        if len(entries) > 1:
            ages = sorted({round(e[1], 6) for e in with_age})
            if len(ages) > 1:
                notes.append(
                    f"IXI_ID {num} appears {len(entries)} times with different AGE "
                    f"({', '.join(f'{a:g}' for a in ages)}): dropped"
                )
                continue
            notes.append(f"IXI_ID {num} appears {len(entries)} times with the same AGE: one row kept")
        # of repeated rows with one AGE, keep the first that records sex (the sheet has zeroed copies)
        row, age, derived = next((e for e in with_age if _sex(e[0], sex_column)[0] is not None), with_age[0])
        if num not in images:
            no_image.append(sid)
            continue
        if derived:
            derived_ids.append(sid)
        path, site = images[num]
        sex, why = _sex(row, sex_column)
        if why == "missing":
            no_sex.append(sid)
        elif why == "unknown":
            unknown_sex.append(f"{sid} ({row[sex_column]!r}, line {row.line})")
        subjects.append(
            Subject(id=sid, group=sid, images={"t1": path}, targets={"age": age}, meta={"site": site, "sex": sex})
        )

    unlisted = [f"IXI{n:03d}" for n in sorted(images) if n not in by_id]
    notes += [
        f"{no_id} row(s) without IXI_ID skipped" if no_id else "",
        counted(derived_ids, "empty AGE(s) derived from STUDY_DATE - DOB"),
        counted(no_age, "id(s) with empty AGE and no STUDY_DATE/DOB to derive it dropped"),
        counted(no_image, "row(s) without a T1 image skipped"),
        counted(unlisted, f"T1 image(s) without a row in {label.name} ignored"),
        counted(extra_images, "extra T1 image(s) for an id already seen ignored"),
        "" if sex_column is not None else
        f"no {SEX_COLUMN} column in {label.name} (meta['sex'] is None; no task needs it)",
        counted(no_sex, f"subject(s) with {sex_column!r} empty or 0 (not recorded): meta['sex'] is None"),
        counted(unknown_sex, f"subject(s) with an unknown {sex_column!r} code in {label.name} (valid: 1 male, "
                             "2 female, 0 not recorded): meta['sex'] is None, no task needs it"),
    ]
    return finish(NAME, TITLE, folder, subjects, notes, EXPECTED_TREE)


# how the dataset's own folder is recognised under any name (brainbench.datasets.locations)
SIGNATURE = (*LABEL_FILES, "IXI-T1/IXI*-T1.nii*")

ADAPTER = register_adapter(NAME, TITLE, FOLDER, EXPECTED_TREE, read, signature=SIGNATURE)
