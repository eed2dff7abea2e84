"""BraTS 2021 (and BraTS 2023 GLI/MEN/MET naming): four structural contrasts plus a tumour label map.

There is no label table: every case folder is one subject (one pre-operative scan of one patient
in 2021; in 2023 the ``-XXX`` suffix is the timepoint, so the group is the ``BraTS-GLI-XXXXX`` part).
Label schemes differ: 2021 uses 1 NCR, 2 ED, 4 ET; 2023 uses 1, 2, 3 (ET = 3); ``meta["label_scheme"]``
says which ("brats2021" / "brats2023").

The TCIA package (RSNA-ASNR-MICCAI-BraTS-2021) groups the case folders by source collection,
``BraTS2021_TrainingSet/<collection>/BraTS2021_NNNNN/`` (ACRIN-FMISO-Brain, CPTAC-GBM, IvyGAP,
TCGA-GBM, TCGA-LGG, UCSF-PDGM, UPENN-GBM, new-not-previously-in-TCIA): case folders one level
down, in such source subfolders, are read too, as one cohort. A case name found twice is an error.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from brainbench.errors import BenchError
from brainbench.subjects import Cohort, Subject

from ._common import counted, find_contrasts, find_image, finish, listed, locate, register_adapter

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
(BraTS 2023 naming is also read: BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1c,t1n,t2f,t2w,seg}.nii.gz;
 the TCIA release's source subfolders too: BraTS2021_TrainingSet/<collection>/BraTS2021_00000/...)"""

CASE_2021 = re.compile(r"^BraTS2021_(\d{5})$")
CASE_2023 = re.compile(r"^(BraTS-[A-Z]+-\d{5})-(\d{3})$")

# our modality name -> file suffix
MODALITIES_2021 = {"t1": "t1", "t1c": "t1ce", "t2": "t2", "flair": "flair"}
MODALITIES_2023 = {"t1": "t1n", "t1c": "t1c", "t2": "t2w", "flair": "t2f"}


JUNK = frozenset({"__macosx"})  # archive debris (macOS resource forks): never a source of cases


def _is_case(name: str) -> bool:
    return bool(CASE_2021.match(name) or CASE_2023.match(name))


def _namings(path: Path) -> set[str]:
    """The case namings ("2021", "2023") of the case folders directly in ``path``."""
    try:
        with os.scandir(path) as entries:
            names = [e.name for e in entries if e.is_dir()]
    except OSError:
        return set()
    return {"2021" if CASE_2021.match(n) else "2023" for n in names if _is_case(n)}


def _may_hold_cases(path: Path) -> bool:
    return not path.name.startswith(".") and path.name.lower() not in JUNK


def _looks_like(path: Path) -> bool:
    """Case folders in ``path``, or in a source subfolder of it."""
    subfolders = [p for p in path.iterdir() if p.is_dir()]
    return (any(_is_case(p.name) for p in subfolders)
            or any(_may_hold_cases(p) and _namings(p) for p in subfolders))


def holds_parts(path: Path) -> bool:
    """Whether ``path`` is a release grouped by source collection (recognised under any name):
    no case folder of its own and at least two subfolders, archive debris apart, every one
    holding case folders of one naming (a 2021 folder beside a 2023 one is two releases)."""
    try:
        subfolders = [p for p in path.iterdir() if p.is_dir() and _may_hold_cases(p)]
    except OSError:
        return False
    if len(subfolders) < 2 or any(_is_case(p.name) for p in subfolders):
        return False
    seen: set[str] = set()
    for sub in sorted(subfolders):  # stops at the first subfolder that is no source
        namings = _namings(sub)
        if not namings:
            return False
        seen |= namings
    return len(seen) == 1


def _case_folders(folder: Path) -> tuple[list[Path], dict[str, int], list[str]]:
    """The case folders in ``folder`` and in its source subfolders; {source: cases}; the
    folders that are neither (ignored)."""
    cases: dict[str, Path] = {}
    sources: dict[str, int] = {}
    ignored: list[str] = []

    def add(case: Path) -> None:
        if case.name in cases:
            raise BenchError(
                f"{TITLE}: case {case.name} is in two folders, {cases[case.name]} and {case}: keep one "
                "copy, or point BRAINBENCH_DATA_BRATS2021 (or [datasets] brats2021 in brainbench.toml) "
                "at the folder to read")
        cases[case.name] = case

    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if _is_case(sub.name):
            add(sub)
        elif _may_hold_cases(sub) and _namings(sub):
            inner = sorted(p for p in sub.iterdir() if p.is_dir())
            for case in inner:
                if _is_case(case.name):
                    add(case)
                else:
                    ignored.append(f"{sub.name}/{case.name}")
            sources[sub.name] = sum(_is_case(p.name) for p in inner)
        else:
            ignored.append(sub.name)
    return list(cases.values()), sources, ignored


def read(root: Path) -> Cohort:
    folder = locate(root, folder=FOLDER, title=TITLE, expected_tree=EXPECTED_TREE,
                    alt_folders=("BraTS2023",), looks_like=_looks_like)
    subjects: list[Subject] = []
    incomplete: list[str] = []
    no_seg: list[str] = []
    schemes: set[str] = set()
    cases, sources, ignored = _case_folders(folder)
    for case in cases:
        m21, m23 = CASE_2021.match(case.name), CASE_2023.match(case.name)
        if m21:
            sep, modalities, scheme, group = "_", MODALITIES_2021, "brats2021", case.name
        else:
            assert m23 is not None
            sep, modalities, scheme, group = "-", MODALITIES_2023, "brats2023", m23.group(1)
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
    notes = [listed([f"{name} ({n})" for name, n in sources.items()],
                    f"case folders read from {len(sources)} source subfolder(s) of {folder.name}")]
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

PARTS_TEXT = ("several subfolders (source collections, as in the TCIA release) each holding "
              "BraTS2021_?????/ (or BraTS-*-?????-???/) case folders")

ADAPTER = register_adapter(NAME, TITLE, FOLDER, EXPECTED_TREE, read, signature=SIGNATURE,
                           parts=holds_parts, parts_text=PARTS_TEXT)
