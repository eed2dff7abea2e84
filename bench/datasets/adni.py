"""ADNI: ADNIMERGE.csv plus one T1 per (participant, visit).

One Subject per (PTID, VISCODE) that has an image; the group is the participant (PTID), so
longitudinal visits of one person never straddle a split. Targets are visit-specific:
``dx`` is the visit's diagnosis (Dementia -> AD) and ``age`` is the baseline AGE plus the years
between the baseline exam and this exam.
"""

from __future__ import annotations

import re
from pathlib import Path

from brainbench.subjects import Cohort, Subject

from ._common import counted, find_image, finish, key_rows, locate, register_adapter, require_dir
from ._tables import parse_code, parse_date, parse_float, read_table

NAME = "adni"
TITLE = "ADNI (ADNIMERGE)"
FOLDER = "ADNI"
LABEL_FILE = "ADNIMERGE.csv"
EXPECTED_TREE = """\
ADNI/
  ADNIMERGE.csv          (RID, PTID, VISCODE, EXAMDATE, DX_bl, DX, AGE, PTGENDER, MMSE, SITE, ...)
  images/
    011_S_0002/
      bl/ADNI_011_S_0002_bl_T1.nii.gz
      m12/ADNI_011_S_0002_m12_T1.nii.gz
    ..."""

REQUIRED = ("PTID", "VISCODE", "EXAMDATE", "DX_bl", "DX", "AGE", "PTGENDER", "SITE")
DX = {"CN": "CN", "MCI": "MCI", "Dementia": "AD", "AD": "AD"}
DX_VALID = "'CN', 'MCI', 'Dementia' (or 'AD')"
DX_BL = {c: c for c in ("CN", "SMC", "EMCI", "LMCI", "AD")}
SEX = {"Male": "M", "Female": "F", "M": "M", "F": "F"}
IMAGE = re.compile(r"^ADNI_(.+)_(.+?)_T1\.nii(\.gz)?$")
DAYS_PER_YEAR = 365.25


def read(root: Path) -> Cohort:
    folder = locate(root, folder=FOLDER, title=TITLE, expected_tree=EXPECTED_TREE, markers=(LABEL_FILE,))
    table = read_table(folder / LABEL_FILE, REQUIRED, expected_tree=EXPECTED_TREE)
    images_dir = require_dir(folder / "images", TITLE, EXPECTED_TREE)

    keyed = key_rows(table, lambda row: (row["PTID"], row["VISCODE"]) if row["PTID"] and row["VISCODE"] else None)
    rows_by_key = keyed.rows

    # Baseline exam date and age per participant: the 'bl' row, else EXAMDATE_bl/AGE on the row.
    baseline = {}
    for (ptid, vis), row in rows_by_key.items():
        if vis == "bl":
            baseline[ptid] = (parse_date(table, row, "EXAMDATE"), parse_float(table, row, "AGE", what="age"))

    subjects: list[Subject] = []
    no_image = []
    no_dx = []
    no_age = []
    for (ptid, vis), row in rows_by_key.items():
        sid = f"{ptid}_{vis}"
        dx = parse_code(table, row, "DX", DX, valid_text=DX_VALID)
        image = find_image(images_dir / ptid / vis, f"ADNI_{ptid}_{vis}_T1")
        if image is None:
            no_image.append(sid)
            continue
        if dx is None:
            no_dx.append(sid)
            continue
        dx_bl = parse_code(table, row, "DX_bl", DX_BL)
        sex = parse_code(table, row, "PTGENDER", SEX)
        exam = parse_date(table, row, "EXAMDATE")
        bl_date, bl_age = baseline.get(ptid, (None, None))
        if bl_date is None and "EXAMDATE_bl" in table.columns:
            bl_date = parse_date(table, row, "EXAMDATE_bl")
        if bl_age is None:
            bl_age = parse_float(table, row, "AGE", what="age")
        if bl_age is None:
            age = None
        elif vis == "bl":
            age = bl_age
        elif exam is None or bl_date is None:
            age = None
        else:
            age = bl_age + (exam - bl_date).days / DAYS_PER_YEAR
        if age is None:
            no_age.append(sid)
        subjects.append(
            Subject(
                id=sid,
                group=ptid,
                images={"t1": image},
                targets={"dx": dx, "age": age},
                meta={"site": row["SITE"] or None, "sex": sex, "viscode": vis, "dx_bl": dx_bl},
            )
        )

    listed = {f"{p}_{v}" for p, v in rows_by_key}
    unlisted = []
    for p in sorted(images_dir.glob("*/*/ADNI_*_T1.nii*")):
        m = IMAGE.match(p.name)
        if m and f"{p.parent.parent.name}_{p.parent.name}" not in listed:
            unlisted.append(f"{p.parent.parent.name}_{p.parent.name}")

    notes = [
        f"{keyed.unkeyed} row(s) of {LABEL_FILE} without PTID or VISCODE skipped" if keyed.unkeyed else "",
        counted([f"{p}_{v}" for p, v in keyed.repeated()], "repeated (PTID, VISCODE) row(s); the first was kept"),
        counted(no_image, "row(s) without an image skipped"),
        counted(no_dx, "visit(s) with an image but empty DX skipped"),
        counted(no_age, "visit(s) without a computable age (targets['age'] is None)"),
        counted(unlisted, f"image(s) without a row in {LABEL_FILE} ignored"),
    ]
    n_groups = len({s.group for s in subjects})
    if subjects:
        notes.append(f"{len(subjects)} visits of {n_groups} participants (grouped by PTID)")
    return finish(NAME, TITLE, folder, subjects, notes, EXPECTED_TREE)


# how the dataset's own folder is recognised under any name (brainbench.datasets.locations)
SIGNATURE = (LABEL_FILE, "images/*/*/ADNI_*_T1.nii*")

ADAPTER = register_adapter(NAME, TITLE, FOLDER, EXPECTED_TREE, read, signature=SIGNATURE)
