"""Pretraining contamination: which evaluation cells a backbone may have seen in pretraining.

Why: a model pretrained on BraTS that is then scored on BraTS has seen the test images (even if
not their labels), and its numbers there are not comparable with a model that has not. Every
backbone declares the corpora its weights were trained on (`Backbone.pretraining_datasets`:
built-ins at registration, cards and Python files in a ``pretraining_datasets`` field); a
result cell is *contaminated* when its evaluation dataset is among them. Tables mark such
cells with ``‡`` and a footnote, the site with a CONTAMINATED badge, and ``--hide-contaminated``
drops them. Undeclared pretraining data is "unknown": nothing is marked, and a note says
contamination could not be checked.

Names are matched after lower-casing and dropping everything but letters and digits, against
each evaluation dataset's registry name, title, folder and the aliases below (the releases that
contain it: BraTS 2023 GLI holds the BraTS 2021 cases, so "BraTS" alone counts as BraTS 2021).
"""

from __future__ import annotations

import json
import logging
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from brainbench.errors import BenchError

log = logging.getLogger("brainbench")

UNKNOWN = "unknown"
FIELD = "pretraining_datasets"
MARK = "‡"
CONTAMINATED_NOTE = (f"{MARK} CONTAMINATED = the cell's evaluation dataset is among the "
                     "datasets the backbone declares it was pretrained on: it has seen these "
                     "images (not necessarily their labels), so the number is not comparable "
                     "with a backbone that has not (--hide-contaminated drops such cells).")
HIDDEN_NOTE = ("{n} contaminated cell(s) hidden (--hide-contaminated): the evaluation dataset "
               "is in the backbone's declared pretraining data.")
UNKNOWN_NOTE = ("Pretraining data not declared (unknown) for {names}: contamination could not "
                "be checked for these rows.")

#: evaluation dataset -> other names of releases that contain it
ALIASES: dict[str, tuple[str, ...]] = {
    "brats2021": ("BraTS", "BraTS 2021", "BraTS21", "RSNA-ASNR-MICCAI BraTS 2021",
                  "BraTS 2023 GLI", "BraTS-GLI"),
    "abide1": ("ABIDE", "ABIDE I", "ABIDE-I"),
    "adni": ("ADNI", "ADNI1", "ADNI2", "ADNI3", "ADNIGO"),
    "atlas2": ("ATLAS", "ATLAS R2.0", "ATLAS v2.0", "ATLAS 2.0"),
    "ixi": ("IXI",),
    "oasis1": ("OASIS-1", "OASIS1", "OASIS cross-sectional"),
    "ucsf_pdgm": ("UCSF-PDGM",),
    "upenn_gbm": ("UPENN-GBM",),
    "bids": ("ds000228",),
}


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def check_pretraining_datasets(value: Any, where: str) -> tuple[str, ...] | None:
    """A declaration -> dataset names (``()`` none), or None for ``"unknown"``; anything else
    is a BenchError naming ``where`` (the field) and what is expected."""
    expected = ('a list of dataset names (e.g. ["ImageNet-1k"]), [] for none (random init, '
                'no learned weights) or "unknown"')
    if isinstance(value, str):
        if value.strip().lower() == UNKNOWN:
            return None
        raise BenchError(f"{where} must be {expected}; got the string {value!r}")
    if not isinstance(value, (list, tuple)):
        raise BenchError(f"{where} must be {expected}; got {type(value).__name__} {value!r}")
    bad = [v for v in value if not isinstance(v, str) or not v.strip()]
    if bad:
        raise BenchError(f"{where} must be {expected}; entries {bad!r} are not non-empty "
                         "strings")
    names = tuple(v.strip() for v in value)
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        raise BenchError(f"{where}: dataset(s) {doubled} listed twice")
    if any(_norm(n) == UNKNOWN for n in names):
        raise BenchError(f'{where}: "unknown" cannot be mixed with dataset names; use '
                         '"unknown" alone')
    return names


def _index() -> dict[str, str]:
    from brainbench.datasets import ADAPTERS

    index: dict[str, str] = {}
    for name in ADAPTERS.names():
        adapter = ADAPTERS.get(name)
        for alias in (name, adapter.title, adapter.folder, *ALIASES.get(name, ())):
            index.setdefault(_norm(alias), name)
    return index


def evaluation_datasets(declared: Iterable[str] | None) -> tuple[str, ...]:
    """The evaluation datasets (registry names) among declared pretraining datasets."""
    index = _index()
    return tuple(sorted({index[_norm(n)] for n in declared or () if _norm(n) in index}))


@dataclass(frozen=True)
class Pretraining:
    """What one backbone declares: ``datasets`` None = unknown; ``source`` = where it was read."""

    backbone: str
    datasets: tuple[str, ...] | None
    source: str

    @property
    def known(self) -> bool:
        return self.datasets is not None

    @property
    def overlap(self) -> tuple[str, ...]:
        return evaluation_datasets(self.datasets)

    def covers(self, dataset: str) -> bool:
        """Whether evaluation dataset ``dataset`` (a registry name) was in the pretraining."""
        return dataset in self.overlap

    def describe(self) -> str:
        if self.datasets is None:
            return UNKNOWN
        return ", ".join(self.datasets) if self.datasets else "none"


def of_backbone(backbone: Any) -> Pretraining:
    """The declaration a built backbone carries."""
    return Pretraining(backbone.name, getattr(backbone, "pretraining_datasets", None),
                       "backbone")


def _from_bundle(folder: Path) -> tuple[str, tuple[str, ...] | None] | None:
    """(name, declaration) of a submission bundle's card or Python file, or None. A bad
    declaration in a bundle placed before imports checked it is "unknown" with a warning: one
    bundle must not stop every table."""
    from brainbench.submission.pyfile import read_pretraining

    try:
        manifest = json.loads((folder / "submission.json").read_text())
        name, file = manifest["name"], manifest["backbone"]["file"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not file:
        return None
    path = folder / file
    try:
        if path.suffix == ".toml":
            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError):
                return None
            return name, check_pretraining_datasets(data.get(FIELD, UNKNOWN),
                                                    f"{path}: {FIELD}")
        if path.suffix == ".py":
            return name, read_pretraining(path)  # from the source, never running the file
    except BenchError as exc:
        log.warning("%s; its pretraining data are shown as unknown", exc)
        return name, None
    return None


def lookup(backbones: Iterable[str], submissions: Path | None = None
           ) -> dict[str, Pretraining]:
    """Each backbone name's declaration: built-ins from their registration, submissions from
    the card or file in their bundle (``submissions``: the bundle root), else unknown."""
    from brainbench.backbone import PRETRAINING_DATASETS, load_plugins

    load_plugins()
    bundles: dict[str, tuple[str, ...] | None] = {}
    if submissions is None:
        from brainbench.submission.bundle import submissions_dir

        submissions = submissions_dir()
    if Path(submissions).is_dir():
        for folder in sorted(Path(submissions).iterdir()):
            found = _from_bundle(folder) if folder.is_dir() else None
            if found is not None:
                bundles[found[0]] = found[1]
    out = {}
    for name in dict.fromkeys(backbones):
        if name in PRETRAINING_DATASETS:
            out[name] = Pretraining(name, PRETRAINING_DATASETS[name], "built-in registration")
        elif name in bundles:
            out[name] = Pretraining(name, bundles[name], "submission bundle")
        else:
            out[name] = Pretraining(name, None, "not declared")
    return out


def contaminated(pretraining: Mapping[str, Pretraining], backbone: str, dataset: str) -> bool:
    found = pretraining.get(backbone)
    return found is not None and found.covers(dataset)


def unknown_note(pretraining: Mapping[str, Pretraining], shown: Iterable[str]) -> str | None:
    names = sorted({b for b in shown if b in pretraining and not pretraining[b].known})
    return UNKNOWN_NOTE.format(names=", ".join(names)) if names else None
