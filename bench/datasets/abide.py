"""ABIDE I: the phenotypic CSV plus one MPRAGE per subject, in per-site folders.

-9999 means missing in every column. Site is a strong confounder (20 sites): it is kept in
``meta["site"]`` so splits can stratify on it. Subject folders are found by SUB_ID under any site
folder, written plainly (``50002``) or zero-padded as in the NITRC release (``0050002``).
"""

from __future__ import annotations

from pathlib import Path

from brainbench.subjects import Cohort, Subject

from ._common import counted, find_image, finish, key_rows, listed, locate, register_adapter
from ._tables import parse_code, parse_float, parse_int, read_table

NAME = "abide1"
TITLE = "ABIDE I"
FOLDER = "ABIDE_I"
LABEL_FILE = "Phenotypic_V1_0b.csv"
EXPECTED_TREE = """\
ABIDE_I/
  Phenotypic_V1_0b.csv   (SITE_ID, SUB_ID, DX_GROUP 1=ASD 2=control, AGE_AT_SCAN, SEX 1=M 2=F; -9999 = missing)
  CALTECH/
    51456/session_1/anat_1/mprage.nii.gz     (zero-padded 0051456/ is read too)
  ..."""

REQUIRED = ("SITE_ID", "SUB_ID", "DX_GROUP", "AGE_AT_SCAN", "SEX")
MISSING = ("-9999", "-9999.0")
DX = {"1": "ASD", "2": "TC"}
SEX = {"1": "M", "2": "F"}


def _subject_folders(folder: Path) -> dict[int, list[Path]]:
    index: dict[int, list[Path]] = {}
    for site in sorted(p for p in folder.iterdir() if p.is_dir()):
        for sub in sorted(p for p in site.iterdir() if p.is_dir() and p.name.isdigit()):
            index.setdefault(int(sub.name), []).append(sub)
    return index


def read(root: Path) -> Cohort:
    folder = locate(root, folder=FOLDER, title=TITLE, expected_tree=EXPECTED_TREE, markers=(LABEL_FILE,))
    table = read_table(folder / LABEL_FILE, REQUIRED, expected_tree=EXPECTED_TREE)
    index = _subject_folders(folder)

    keyed = key_rows(table, lambda row: parse_int(table, row, "SUB_ID", what="subject id", missing=MISSING),
                     drop_conflicts=True)
    rows = keyed.rows

    subjects: list[Subject] = []
    no_image, no_dx, no_age, ambiguous = [], [], [], []
    for sub, row in rows.items():
        if row is None:
            continue
        dx = parse_code(table, row, "DX_GROUP", DX, missing=MISSING, valid_text="1 (ASD), 2 (control), -9999 (missing)")
        age = parse_float(table, row, "AGE_AT_SCAN", what="age", missing=MISSING)
        sex = parse_code(table, row, "SEX", SEX, missing=MISSING, valid_text="1 (male), 2 (female), -9999 (missing)")
        site = row["SITE_ID"]
        candidates = index.get(sub, [])
        if len(candidates) > 1:  # prefer the folder under the row's site
            same_site = [c for c in candidates if c.parent.name.lower() == site.lower()]
            if len(same_site) == 1:
                candidates = same_site
            else:
                ambiguous.append(sub)
        image = None
        for cand in candidates:
            image = find_image(cand / "session_1" / "anat_1", "mprage")
            if image is not None:
                break
        if image is None:
            no_image.append(sub)
            continue
        if dx is None:
            no_dx.append(sub)
            continue
        if age is None:
            no_age.append(sub)
        subjects.append(
            Subject(
                id=str(sub),
                group=str(sub),
                images={"t1": image},
                targets={"dx": dx, "age": age},
                meta={"site": site or None, "sex": sex},
            )
        )

    unlisted = sorted(s for s in index if s not in rows)
    notes = [
        listed(keyed.repeated(identical=True), "SUB_ID repeated with identical rows, one kept"),
        listed(keyed.repeated(identical=False), "SUB_ID repeated with different rows, dropped"),
        counted(no_image, "row(s) without an image skipped"),
        counted(no_dx, "subject(s) with DX_GROUP missing (-9999) skipped"),
        counted(no_age, "subject(s) with AGE_AT_SCAN missing (targets['age'] is None)"),
        listed(ambiguous, "SUB_ID found under several site folders, the first with an image used"),
        counted(unlisted, f"subject folder(s) without a row in {LABEL_FILE} ignored"),
    ]
    return finish(NAME, TITLE, folder, subjects, notes, EXPECTED_TREE)


# how the dataset's own folder is recognised under any name (brainbench.datasets.locations)
SIGNATURE = (LABEL_FILE, "*/[0-9]*/session_1/anat_1/mprage.nii*")

ADAPTER = register_adapter(NAME, TITLE, FOLDER, EXPECTED_TREE, read, signature=SIGNATURE)
