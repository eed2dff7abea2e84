"""OASIS-1 (cross-sectional): ``oasis_cross-sectional.csv`` plus the per-session disc folders.

Each session ``OAS1_XXXX_MRn`` is one Subject; the group is the person ``OAS1_XXXX`` (the 20
reliability rescans ``_MR2`` stay with their ``_MR1``). The target ``dementia`` is ``demented``
when CDR > 0 and ``nondemented`` when CDR = 0; CDR is empty for participants who were not
clinically rated (mostly those under 60): they have no label and are reported, not guessed.
The image is the atlas-registered, bias-corrected, brain-masked T1 of the release (Analyze
``.img``/``.hdr`` pair as distributed; a NIfTI conversion with the same stem is read too).
"""

from __future__ import annotations

import re
from pathlib import Path

from brainbench.errors import BenchError
from brainbench.subjects import Cohort, Subject

from ._common import counted, finish, key_rows, listed, locate, register_adapter
from ._tables import Row, is_missing, parse_code, parse_float, read_table

NAME = "oasis1"
TITLE = "OASIS-1"
FOLDER = "OASIS-1"
LABEL_FILE = "oasis_cross-sectional.csv"
IMAGE_DIR = Path("PROCESSED", "MPRAGE", "T88_111")
EXPECTED_TREE = f"""\
OASIS-1/
  {LABEL_FILE}   (ID, M/F, Hand, Age, Educ, SES, MMSE, CDR, eTIV, nWBV, ASF, Delay)
  disc1/
    OAS1_0001_MR1/PROCESSED/MPRAGE/T88_111/
      OAS1_0001_MR1_mpr_n4_anon_111_t88_masked_gfc.img   (+ .hdr; .nii.gz read too)
    ...
  disc2/ ...                         (or the session folders directly under OASIS-1/)"""

REQUIRED = ("ID", "M/F", "Age", "CDR")
ID = re.compile(r"^(OAS1_(\d{4}))_MR(\d+)$")
SEX = {"M": "M", "F": "F"}
CDR_VALUES = (0.0, 0.5, 1.0, 2.0, 3.0)
# preferred first: the masked, gain-field-corrected atlas image, then the unmasked one
IMAGE_STEMS = ("_mpr_n4_anon_111_t88_masked_gfc", "_mpr_n4_anon_111_t88_gfc")
IMAGE_SUFFIXES = (".img", ".nii.gz", ".nii")


def _session_dirs(folder: Path) -> dict[str, Path]:
    dirs: dict[str, Path] = {}
    for parent in [folder, *sorted(p for p in folder.glob("disc*") if p.is_dir())]:
        for p in sorted(parent.iterdir()):
            if p.is_dir() and ID.match(p.name):
                dirs.setdefault(p.name, p)
    return dirs


def _image(session: Path) -> Path | None:
    for stem in IMAGE_STEMS:
        for suffix in IMAGE_SUFFIXES:
            p = session / IMAGE_DIR / f"{session.name}{stem}{suffix}"
            if p.is_file() and (suffix != ".img" or p.with_suffix(".hdr").is_file()):
                return p
    return None


def read(root: Path) -> Cohort:
    folder = locate(root, folder=FOLDER, title=TITLE, expected_tree=EXPECTED_TREE,
                    markers=(LABEL_FILE,), alt_folders=("OASIS1", "OASIS"))
    table = read_table(folder / LABEL_FILE, REQUIRED, expected_tree=EXPECTED_TREE)
    sessions = _session_dirs(folder)

    def session_id(row: Row) -> str | None:
        raw = row["ID"].strip()
        if is_missing(raw):
            return None
        if not ID.match(raw):
            raise BenchError(f"cannot parse session id {raw!r} in {table.where(row, 'ID')} "
                             "(expected OAS1_0001_MR1)")
        return raw

    keyed = key_rows(table, session_id)
    rows = keyed.rows

    subjects: list[Subject] = []
    no_image, no_cdr = [], []
    for sid, row in rows.items():
        cdr = parse_float(table, row, "CDR", what="CDR")
        if cdr is not None and cdr not in CDR_VALUES:
            raise BenchError(f"unknown code {row['CDR']!r} in {table.where(row, 'CDR')}; "
                             f"valid codes: {', '.join(f'{v:g}' for v in CDR_VALUES)} or empty (not rated)")
        age = parse_float(table, row, "Age", what="age")
        sex = parse_code(table, row, "M/F", SEX, valid_text="'M', 'F'")
        mmse = parse_float(table, row, "MMSE", what="MMSE") if "MMSE" in table.columns else None
        session = sessions.get(sid)
        image = _image(session) if session is not None else None
        if image is None:
            no_image.append(sid)
            continue
        if cdr is None:
            no_cdr.append(sid)
        m = ID.match(sid)
        subjects.append(Subject(
            id=sid, group=m.group(1), images={"t1": image},
            targets={"dementia": None if cdr is None else ("demented" if cdr > 0 else "nondemented"),
                     "cdr": cdr, "age": age, "mmse": mmse},
            meta={"sex": sex, "session": f"MR{m.group(3)}", "hand": row["Hand"] or None},
        ))

    unlisted = sorted(s for s in sessions if s not in rows)
    rescans = sorted(s.id for s in subjects if not s.id.endswith("_MR1"))
    notes = [
        listed(keyed.repeated(), f"ID repeated in {LABEL_FILE}, the first row kept"),
        counted(no_image, "row(s) without a T88_111 image skipped"),
        counted(no_cdr, "session(s) with CDR empty (not clinically rated; targets['dementia'] is None)"),
        counted(rescans, "reliability rescan(s) grouped with their first session"),
        counted(unlisted, f"session folder(s) without a row in {LABEL_FILE} ignored"),
    ]
    return finish(NAME, TITLE, folder, subjects, notes, EXPECTED_TREE)


# how the dataset's own folder is recognised under any name (brainbench.datasets.locations)
SIGNATURE = (LABEL_FILE, "disc*/OAS1_????_MR?/PROCESSED/MPRAGE/T88_111/*_t88_masked_gfc.img")

ADAPTER = register_adapter(NAME, TITLE, FOLDER, EXPECTED_TREE, read, signature=SIGNATURE)
