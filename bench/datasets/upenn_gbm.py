"""UPENN-GBM v2.1: the clinical CSV plus structural MRI per session.

Session ids are ``UPENN-GBM-NNNNN_11`` (pre-operative baseline) and ``UPENN-GBM-NNNNN_21``
(follow-up of the same patient). The CSV has a row per baseline only; follow-up sessions that
have images inherit their patient's targets (survival, event, IDH) and sex/age (age at the
baseline scan). Every session of a patient shares ``group = "UPENN-GBM-NNNNN"``.

Survival: ``os_days`` from Survival_from_surgery_days_UPDATED (None if 'Not Available');
``event`` is True when death was observed (Survival_Status 'Deceased', Survival_Censor 0).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from brainbench.errors import BenchError
from brainbench.subjects import Cohort, Subject

from ._common import counted, find_contrasts, finish, listed, locate, register_adapter, require_dir
from ._tables import Row, Table, is_missing, parse_code, parse_float, read_table

NAME = "upenn_gbm"
TITLE = "UPENN-GBM"
FOLDER = "UPENN-GBM"
LABEL_FILE = "UPENN-GBM_clinical_info_v2.1.csv"
IMAGE_DIR = "images_structural"
EXPECTED_TREE = f"""\
UPENN-GBM/
  {LABEL_FILE}   (ID like UPENN-GBM-00001_11, Gender, Age_at_scan_years,
                 Survival_from_surgery_days_UPDATED, Survival_Status, Survival_Censor, IDH1, MGMT, KPS)
  {IMAGE_DIR}/
    UPENN-GBM-00001_11/
      UPENN-GBM-00001_11_T1.nii.gz
      UPENN-GBM-00001_11_T1GD.nii.gz
      UPENN-GBM-00001_11_T2.nii.gz
      UPENN-GBM-00001_11_FLAIR.nii.gz
    UPENN-GBM-00001_21/ ...      (follow-up session: no CSV row, inherits the patient's)
    ..."""

SURVIVAL = "Survival_from_surgery_days_UPDATED"
REQUIRED = ("ID", "Gender", "Age_at_scan_years", SURVIVAL, "Survival_Status", "Survival_Censor", "IDH1")
ID = re.compile(r"^(UPENN-GBM-(\d+))(?:_(\d+))?$", re.IGNORECASE)
SESSION_DIR = re.compile(r"^(UPENN-GBM-(\d+))_(\d+)$", re.IGNORECASE)
MODALITIES = {"t1": "T1", "t1c": "T1GD", "t2": "T2", "flair": "FLAIR"}
SEX = {"M": "M", "F": "F", "Male": "M", "Female": "F"}
STATUS = {"Deceased": True, "Dead": True, "Alive": False}
CENSOR = {"1": True, "0": False}  # True = censored
IDH = {"Wildtype": "wildtype", "Wild type": "wildtype", "Mutated": "mutant", "Mutant": "mutant"}
IDH_MISSING = ("NOS/NEC", "Indeterminate", "Not Done")


def _targets(table: Table, row: Row) -> dict[str, Any]:
    os_days = parse_float(table, row, SURVIVAL, what="survival (days)")
    status = parse_code(table, row, "Survival_Status", STATUS, valid_text="'Deceased', 'Alive', 'Not Available'")
    censored = parse_code(table, row, "Survival_Censor", CENSOR, valid_text="1 (censored), 0 (death observed)")
    if status is not None and censored is not None and status == censored:
        raise BenchError(
            f"{row['ID']}: Survival_Status {row['Survival_Status']!r} disagrees with Survival_Censor "
            f"{row['Survival_Censor']!r} (1 = censored/alive, 0 = death observed) in {table.where(row)}"
        )
    event = status if status is not None else (None if censored is None else not censored)
    idh = parse_code(
        table, row, "IDH1", IDH, missing=IDH_MISSING,
        valid_text="'Wildtype', 'Mutated', 'NOS/NEC', 'Not Available'",
    )
    return {"os_days": os_days, "event": event, "idh": idh}


def read(root: Path) -> Cohort:
    folder = locate(root, folder=FOLDER, title=TITLE, expected_tree=EXPECTED_TREE, markers=(LABEL_FILE,))
    table = read_table(folder / LABEL_FILE, REQUIRED, expected_tree=EXPECTED_TREE)
    image_root = require_dir(folder / IMAGE_DIR, TITLE, EXPECTED_TREE)

    # (patient number, session or None) -> (targets, meta)
    records: dict[tuple[int, str | None], tuple[dict, dict]] = {}
    duplicates = []
    for row in table:
        raw = row["ID"]
        if is_missing(raw):
            continue
        m = ID.match(raw.strip())
        if not m:
            raise BenchError(
                f"cannot parse session id {raw!r} in {table.where(row, 'ID')} (expected UPENN-GBM-00001_11)"
            )
        key = (int(m.group(2)), m.group(3))
        targets = _targets(table, row)
        meta = {
            "sex": parse_code(table, row, "Gender", SEX),
            "age": parse_float(table, row, "Age_at_scan_years", what="age"),
        }
        if key in records:
            duplicates.append(raw)
            continue
        records[key] = (targets, meta)

    def patient_key(num: int) -> tuple[int, str | None] | None:
        """The row a session without its own row inherits: the patient's row, else its first session's."""
        if (num, None) in records:
            return (num, None)
        sessions = sorted(s for (n, s) in records if n == num and s is not None)
        return (num, sessions[0]) if sessions else None

    subjects: list[Subject] = []
    direct: set[tuple[int, str | None]] = set()  # rows whose own session has images
    used: set[tuple[int, str | None]] = set()  # rows inherited by a follow-up session
    incomplete, orphan, inherited = [], [], []
    for sdir in sorted(p for p in image_root.iterdir() if p.is_dir()):
        m = SESSION_DIR.match(sdir.name)
        if not m:
            continue
        num, ses = int(m.group(2)), m.group(3)
        images, absent = find_contrasts(sdir, MODALITIES, f"{sdir.name}_")
        if absent:
            incomplete.append(f"{sdir.name} (no {', '.join(absent)})")
            continue
        if (num, ses) in records:
            targets, meta = records[(num, ses)]
            direct.add((num, ses))
        else:
            key = patient_key(num)
            if key is None:
                orphan.append(sdir.name)
                continue
            targets, meta = records[key]
            used.add(key)
            inherited.append(sdir.name)
        subjects.append(
            Subject(
                id=sdir.name,
                group=m.group(1),
                images=images,
                targets=dict(targets),
                meta={"session": ses, **meta},
            )
        )

    no_image = [
        f"UPENN-GBM-{n:05d}" + (f"_{s}" if s else "")
        for (n, s) in records
        if (n, s) not in direct and (s is not None or (n, s) not in used)
    ]
    no_os = sum(1 for s in subjects if s.targets["os_days"] is None)
    notes = [
        listed(duplicates, f"ID repeated in {LABEL_FILE}, the first row kept"),
        counted(no_image, "row(s) without a complete image session skipped"),
        counted(incomplete, "session(s) without all four contrasts skipped", n=3),
        counted(inherited, "follow-up session(s) without a CSV row inherit their patient's targets, sex and "
                           "baseline age"),
        counted(orphan, f"session folder(s) of patients without a row in {LABEL_FILE} ignored"),
        f"{no_os} session(s) with survival 'Not Available' (targets['os_days'] is None)" if no_os else "",
    ]
    return finish(NAME, TITLE, folder, subjects, notes, EXPECTED_TREE)


# how the dataset's own folder is recognised under any name (brainbench.datasets.locations)
SIGNATURE = (LABEL_FILE, "images_structural/UPENN-GBM-*/UPENN-GBM-*_T1.nii*")

ADAPTER = register_adapter(NAME, TITLE, FOLDER, EXPECTED_TREE, read, signature=SIGNATURE)
