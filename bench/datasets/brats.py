"""BraTS 2021 (and BraTS 2023 GLI/MEN/MET naming): four structural contrasts plus a tumour label map.

There is no label table: every case folder is one subject (one pre-operative scan of one patient
in 2021; in 2023 the ``-XXX`` suffix is the timepoint, so the group is the ``BraTS-GLI-XXXXX`` part).
Label schemes differ: 2021 uses 1 NCR, 2 ED, 4 ET; 2023 uses 1, 2, 3 (ET = 3); ``meta["label_scheme"]``
says which ("brats2021" / "brats2023").
"""

from __future__ import annotations

import re
from pathlib import Path

from brainbench.subjects import Cohort, Subject

from ._common import counted, find_contrasts, find_image, finish, locate, register_adapter

NAME = "brats2021"
TITLE = "BraTS 2021"
FOLDER = "BraTS2021"
EXPECTED_TREE = """\
BraTS2021/
  BraTS2021_00000/
    BraTS2021_00000_t1.nii.gz
    BraTS2021_00000_t1ce.nii.gz
    BraTS2021_00000_t2.nii.gz
    BraTS2021_00000_flair.nii.gz
    BraTS2021_00000_seg.nii.gz        (labels 1 NCR, 2 ED, 4 ET)
  ...
(BraTS 2023 naming is also read: BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1c,t1n,t2f,t2w,seg}.nii.gz)"""

CASE_2021 = re.compile(r"^BraTS2021_(\d{5})$")
CASE_2023 = re.compile(r"^(BraTS-[A-Z]+-\d{5})-(\d{3})$")

# our modality name -> file suffix
MODALITIES_2021 = {"t1": "t1", "t1c": "t1ce", "t2": "t2", "flair": "flair"}
MODALITIES_2023 = {"t1": "t1n", "t1c": "t1c", "t2": "t2w", "flair": "t2f"}


def _is_case(name: str) -> bool:
    return bool(CASE_2021.match(name) or CASE_2023.match(name))


def _looks_like(path: Path) -> bool:
    return any(p.is_dir() and _is_case(p.name) for p in path.iterdir())


def read(root: Path) -> Cohort:
    folder = locate(root, folder=FOLDER, title=TITLE, expected_tree=EXPECTED_TREE,
                    alt_folders=("BraTS2023",), looks_like=_looks_like)
    subjects: list[Subject] = []
    incomplete: list[str] = []
    no_seg: list[str] = []
    ignored: list[str] = []
    schemes: set[str] = set()
    for case in sorted(p for p in folder.iterdir() if p.is_dir()):
        m21, m23 = CASE_2021.match(case.name), CASE_2023.match(case.name)
        if m21:
            sep, modalities, scheme, group = "_", MODALITIES_2021, "brats2021", case.name
        elif m23:
            sep, modalities, scheme, group = "-", MODALITIES_2023, "brats2023", m23.group(1)
        else:
            ignored.append(case.name)
            continue
        images, absent = find_contrasts(case, modalities, f"{case.name}{sep}")
        if absent:
            files = ", ".join(f"{case.name}{sep}{suffix}.nii.gz" for suffix in absent)
            incomplete.append(f"{case.name} (no {files})")
            continue
        seg = find_image(case, f"{case.name}{sep}seg")
        if seg is None:
            no_seg.append(case.name)
        schemes.add(scheme)
        subjects.append(
            Subject(
                id=case.name,
                group=group,
                images=images,
                targets={"seg": seg},
                meta={"label_scheme": scheme},
            )
        )
    notes = []
    if len(schemes) > 1:
        notes.append("both BraTS 2021 and BraTS 2023 case naming found: label schemes differ (meta label_scheme)")
    elif schemes == {"brats2023"}:
        notes.append("BraTS 2023 naming (t1n->t1, t1c->t1c, t2w->t2, t2f->flair; labels 1, 2, 3 with ET=3)")
    notes += [
        counted(incomplete, "case folder(s) without all four contrasts skipped", n=3),
        counted(no_seg, "case(s) without a segmentation (targets['seg'] is None)"),
        counted(ignored, "folder(s) not named like a BraTS case ignored"),
    ]
    return finish(NAME, TITLE, folder, subjects, notes, EXPECTED_TREE)


# how the dataset's own folder is recognised under any name (brainbench.datasets.locations)
SIGNATURE = ("BraTS2021_?????/BraTS2021_?????_t1.nii*", "BraTS-*-?????-???/BraTS-*-?????-???-t1n.nii*")

ADAPTER = register_adapter(NAME, TITLE, FOLDER, EXPECTED_TREE, read, signature=SIGNATURE)
