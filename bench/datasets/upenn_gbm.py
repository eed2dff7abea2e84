"""UPENN-GBM v2.1: the clinical CSV plus structural MRI per session.

Session ids are ``UPENN-GBM-NNNNN_11`` (pre-operative baseline) and ``UPENN-GBM-NNNNN_21``
(follow-up of the same patient). A session with its own CSV row (v2.1 has one per scan) uses
it; a follow-up session without one inherits its patient's targets (survival, event, IDH) and
sex/age (age at the baseline scan). Every session of a patient shares
``group = "UPENN-GBM-NNNNN"``. Tasks on the baseline scan (``select={"session": "11"}``) set the
follow-up sessions aside; the notes count them.

Survival (``os_days``, ``event``), by Survival_Status:
- 'Deceased': event True, time Survival_from_surgery_days_UPDATED;
- 'Alive' / 'Lost to Follow-up': censored (event False) at the last known time;
- 'Deceased - uncertain date of death': event True but no usable time (``os_days`` None, noted).
Survival_Censor comes in two forms, told apart per file: in v2.1 it holds the censoring time in
days for the censored (whose days from surgery are 'Not Available'), which is then their time;
a file whose Survival_Censor values are all 0/1 uses it as the censoring flag (1 censored, 0
death observed), checked against Survival_Status, and the time is always days from surgery.
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
                 Survival_from_surgery_days_UPDATED (deaths), Survival_Status, Survival_Censor (censoring
                 time in days, or a 1/0 censored flag), IDH1, MGMT, KPS)
  {IMAGE_DIR}/
    UPENN-GBM-00001_11/
      UPENN-GBM-00001_11_T1.nii.gz
      UPENN-GBM-00001_11_T1GD.nii.gz
      UPENN-GBM-00001_11_T2.nii.gz
      UPENN-GBM-00001_11_FLAIR.nii.gz
    UPENN-GBM-00001_21/ ...      (follow-up session: its own CSV row (v2.1), else inherits the patient's)
    ..."""

SURVIVAL = "Survival_from_surgery_days_UPDATED"
REQUIRED = ("ID", "Gender", "Age_at_scan_years", SURVIVAL, "Survival_Status", "Survival_Censor", "IDH1")
ID = re.compile(r"^(UPENN-GBM-(\d+))(?:_(\d+))?$", re.IGNORECASE)
SESSION_DIR = re.compile(r"^(UPENN-GBM-(\d+))_(\d+)$", re.IGNORECASE)
MODALITIES = {"t1": "T1", "t1c": "T1GD", "t2": "T2", "flair": "FLAIR"}
BASELINE = "11"  # the pre-operative session
SEX = {"M": "M", "F": "F", "Male": "M", "Female": "F"}
STATUS = {"Deceased": "deceased", "Dead": "deceased", "Alive": "alive", "Lost to Follow-up": "lost",
          "Lost to follow up": "lost", "Deceased - uncertain date of death": "uncertain"}
STATUS_TEXT = "'Deceased', 'Alive', 'Lost to Follow-up', 'Deceased - uncertain date of death', 'Not Available'"
EVENT = {"deceased": True, "uncertain": True, "alive": False, "lost": False}
CENSOR = {"1": True, "0": False}  # the flag form: True = censored
IDH = {"Wildtype": "wildtype", "Wild type": "wildtype", "Mutated": "mutant", "Mutant": "mutant"}
IDH_MISSING = ("NOS/NEC", "Indeterminate", "Not Done")


def _censor_is_time(table: Table) -> bool:
    """Whether Survival_Censor holds censoring times in days (v2.1) rather than a 0/1 flag:
    any value other than 0 and 1. A value that is no number is an error naming it."""
    as_time = False
    for row in table:
        raw = row["Survival_Censor"]
        if is_missing(raw):
            continue
        try:
            value = float(raw)
        except ValueError:
            raise BenchError(
                f"cannot parse Survival_Censor {raw!r} in {table.where(row, 'Survival_Censor')}: expected "
                "the censoring time in days (v2.1), or the flag 1 (censored) / 0 (death observed)") from None
        as_time = as_time or value not in (0.0, 1.0)
    return as_time


def _targets(table: Table, row: Row, censor_is_time: bool) -> tuple[dict[str, Any], str | None]:
    """The session's targets, and its Survival_Status code (None when not available)."""
    days = parse_float(table, row, SURVIVAL, what="survival (days)")
    status = parse_code(table, row, "Survival_Status", STATUS, valid_text=STATUS_TEXT)
    event = None if status is None else EVENT[status]
    if censor_is_time:
        censor_days = parse_float(table, row, "Survival_Censor", what="censoring time (days)")
        if status == "uncertain":
            days = None
        elif status in ("alive", "lost"):
            days = censor_days if censor_days is not None else days
    else:
        censored = parse_code(table, row, "Survival_Censor", CENSOR, valid_text="1 (censored), 0 (death observed)")
        if event is not None and censored is not None and event == censored:
            raise BenchError(
                f"{row['ID']}: Survival_Status {row['Survival_Status']!r} disagrees with Survival_Censor "
                f"{row['Survival_Censor']!r} (1 = censored/alive, 0 = death observed) in {table.where(row)}"
            )
        if status == "uncertain":
            days = None
        if event is None and censored is not None:
            event = not censored
    idh = parse_code(
        table, row, "IDH1", IDH, missing=IDH_MISSING,
        valid_text="'Wildtype', 'Mutated', 'NOS/NEC', 'Not Available'",
    )
    return {"os_days": days, "event": event, "idh": idh}, status


def read(root: Path) -> Cohort:
    folder = locate(root, folder=FOLDER, title=TITLE, expected_tree=EXPECTED_TREE, markers=(LABEL_FILE,))
    table = read_table(folder / LABEL_FILE, REQUIRED, expected_tree=EXPECTED_TREE)
    image_root = require_dir(folder / IMAGE_DIR, TITLE, EXPECTED_TREE)

    censor_is_time = _censor_is_time(table)
    # (patient number, session or None) -> (targets, meta)
    records: dict[tuple[int, str | None], tuple[dict, dict]] = {}
    statuses: dict[tuple[int, str | None], str | None] = {}
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
        targets, status = _targets(table, row, censor_is_time)
        meta = {
            "sex": parse_code(table, row, "Gender", SEX),
            "age": parse_float(table, row, "Age_at_scan_years", what="age"),
        }
        if key in records:
            duplicates.append(raw)
            continue
        records[key] = (targets, meta)
        statuses[key] = status

    def patient_key(num: int) -> tuple[int, str | None] | None:
        """The row a session without its own row inherits: the patient's row, else its first session's."""
        if (num, None) in records:
            return (num, None)
        sessions = sorted(s for (n, s) in records if n == num and s is not None)
        return (num, sessions[0]) if sessions else None

    subjects: list[Subject] = []
    direct: set[tuple[int, str | None]] = set()  # rows whose own session has images
    used: set[tuple[int, str | None]] = set()  # rows inherited by a follow-up session
    incomplete, orphan, inherited, uncertain, lost = [], [], [], [], []
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
            key: tuple[int, str | None] | None = (num, ses)
            direct.add((num, ses))
        else:
            key = patient_key(num)
            if key is None:
                orphan.append(sdir.name)
                continue
            used.add(key)
            inherited.append(sdir.name)
        targets, meta = records[key]
        status = statuses[key]
        if status == "uncertain":
            uncertain.append(sdir.name)
        elif status == "lost":
            lost.append(sdir.name)
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
    no_os = sum(1 for s in subjects if s.targets["os_days"] is None and s.id not in uncertain)
    follow_up = [s.id for s in subjects if s.meta["session"] != BASELINE]
    baselined = {s.group for s in subjects if s.meta["session"] == BASELINE}
    without_baseline = sorted({s.group for s in subjects if s.meta["session"] != BASELINE} - baselined)
    notes = [
        listed(duplicates, f"ID repeated in {LABEL_FILE}, the first row kept"),
        counted(no_image, "row(s) without a complete image session skipped"),
        counted(incomplete, "session(s) without all four contrasts skipped", n=3),
        counted(inherited, "follow-up session(s) without a CSV row inherit their patient's targets, sex and "
                           "baseline age"),
        counted(orphan, f"session folder(s) of patients without a row in {LABEL_FILE} ignored"),
        f"{no_os} session(s) with survival 'Not Available' (targets['os_days'] is None)" if no_os else "",
        "Survival_Censor read as the censoring time in days (v2.1): the survival time of the 'Alive' and "
        "'Lost to Follow-up' sessions" if censor_is_time else "",
        counted(lost, "session(s) 'Lost to Follow-up': censored at the last known time"),
        counted(uncertain, "session(s) 'Deceased - uncertain date of death': no usable survival time "
                           "(targets['os_days'] is None)"),
        counted(follow_up, f"follow-up session(s) (not _{BASELINE}) in the cohort; tasks on the baseline scan "
                           f"(select session {BASELINE}: survival_1yr, survival_cox) set them aside"),
        counted(without_baseline, f"patient(s) with follow-up sessions only (no complete _{BASELINE} "
                                  "session): not in the baseline tasks"),
    ]
    return finish(NAME, TITLE, folder, subjects, notes, EXPECTED_TREE)


# how the dataset's own folder is recognised under any name (brainbench.datasets.locations)
SIGNATURE = (LABEL_FILE, "images_structural/UPENN-GBM-*/UPENN-GBM-*_T1.nii*")

ADAPTER = register_adapter(NAME, TITLE, FOLDER, EXPECTED_TREE, read, signature=SIGNATURE)
