"""Fixed train/test splits and nested label-fraction subsets, as pure functions of the IDs.

Split: groups (people) are stratified; within each stratum they are ordered by
sha256(salt:group) and the first ones become test. Stratum quotas use the largest-remainder
rule so the test set is test_fraction of the cohort overall, not per tiny stratum.

Subsets: per seed, within each label stratum of the training pool, groups are ordered by
sha256(seed:group); fraction f takes the first max(min_per_stratum, ceil(f * n)) of each
stratum. The ordering never depends on f, so 1% is inside 5% is inside 10%.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from brainbench.errors import BenchError
from brainbench.taskspec import Sample

SPLIT_SCHEMA = 1


def _order_key(prefix: str, group: str) -> str:
    return hashlib.sha256(f"{prefix}:{group}".encode()).hexdigest()


def digest(obj: object) -> str:
    """sha256 of canonical JSON: the one way this project hashes configurations."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _split_digest(train: Iterable[str], test: Iterable[str], variant: str = "",
                  held_out: Sequence[str] = ()) -> str:
    """The split hash: its lists, plus the variant and held-out sites for a split variant
    (standard splits keep the hashes every earlier manifest and store holds)."""
    content: dict[str, object] = {"schema": SPLIT_SCHEMA, "train": sorted(train),
                                  "test": sorted(test)}
    if variant:
        content.update(variant=variant, held_out=sorted(held_out))
    return digest(content)


@dataclass(frozen=True)
class Split:
    """A fixed train/test split; ``variant`` names a split variant ("" = the standard one) and
    ``held_out`` what it holds out (the test site of a site-held-out split)."""

    task: str
    dataset: str
    salt: str
    test_fraction: float
    train_groups: tuple[str, ...]
    test_groups: tuple[str, ...]
    variant: str = ""
    held_out: tuple[str, ...] = ()

    @property
    def hash(self) -> str:
        return _split_digest(self.train_groups, self.test_groups, self.variant, self.held_out)

    @property
    def label(self) -> str:
        """What a cell records as its split: "" or e.g. "site-held-out:IOP"."""
        return f"{self.variant}:{','.join(self.held_out)}" if self.variant else ""

    def to_manifest(self) -> dict:
        manifest = {
            "schema": SPLIT_SCHEMA, "task": self.task, "dataset": self.dataset, "salt": self.salt,
            "test_fraction": self.test_fraction, "hash": self.hash,
            "train": sorted(self.train_groups), "test": sorted(self.test_groups),
        }
        if self.variant:
            manifest.update(variant=self.variant, held_out=sorted(self.held_out))
        return manifest


def _group_strata(samples: Sequence[Sample], attr: str) -> dict[str, str]:
    """One stratum per group: the stratum of its first sample (samples of a person agree)."""
    strata: dict[str, str] = {}
    for sample in sorted(samples, key=lambda s: s.id):
        strata.setdefault(sample.group, getattr(sample, attr))
    return strata


def _apportion(sizes: dict[str, int], total: int) -> dict[str, int]:
    """Split `total` across strata proportionally to size (largest remainder, ties by name)."""
    n = sum(sizes.values())
    quotas = {k: total * size / n if n else 0.0 for k, size in sizes.items()}
    counts = {k: math.floor(q) for k, q in quotas.items()}
    by_remainder = sorted(quotas, key=lambda k: (-(quotas[k] - counts[k]), k))
    for k in by_remainder[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


def make_split(task: str, dataset: str, samples: Sequence[Sample], salt: str,
               test_fraction: float, require_all_labels: bool = True) -> Split:
    """Test quotas are set per label first (each label with 2+ people gets 1+ test and 1+
    train person), then shared among that label's sub-strata (e.g. sites).

    require_all_labels: classes (or event status) must appear on both sides, else the metric
    is undefined; regression bins only balance the split and need not.
    """
    labels = _group_strata(samples, "fraction_stratum")
    strata = _group_strata(samples, "split_stratum")
    members: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for group, label in labels.items():
        members[label][strata[group]].append(group)
    label_sizes = {label: sum(map(len, subs.values())) for label, subs in members.items()}
    label_counts = _apportion(label_sizes, round(test_fraction * len(labels)))
    test: list[str] = []
    train: list[str] = []
    for label, subs in sorted(members.items()):
        n = label_sizes[label]
        count = min(max(label_counts[label], 1), n - 1) if n >= 2 else label_counts[label]
        sub_counts = _apportion({k: len(v) for k, v in subs.items()}, count)
        for stratum, groups in sorted(subs.items()):
            ordered = sorted(groups, key=lambda g: _order_key(salt, g))
            test += ordered[: sub_counts[stratum]]
            train += ordered[sub_counts[stratum]:]
    split = Split(task, dataset, salt, test_fraction, tuple(sorted(train)), tuple(sorted(test)))
    if require_all_labels:
        _check_labels_on_both_sides(split, samples)
    return split


def make_site_split(task: str, dataset: str, samples: Sequence[Sample], salt: str,
                    test_fraction: float, variant: str,
                    require_all_labels: bool = True) -> Split:
    """Hold out one whole site as the test set (`brainbench.taskspec.SiteHeldOut`): the site
    closest in people to ``test_fraction`` of the cohort among those that leave every label on
    both sides and at least one training site. Samples must all carry a site."""
    sites = _group_strata(samples, "site")
    labels = _group_strata(samples, "fraction_stratum")
    people: dict[str, list[str]] = defaultdict(list)
    for group, site in sites.items():
        people[site].append(group)
    all_labels = set(labels.values())
    target = test_fraction * len(sites)

    def usable(site: str) -> bool:
        held = set(people[site])
        test_labels = {labels[g] for g in held}
        train_labels = {labels[g] for g in labels if g not in held}
        both = test_labels == all_labels == train_labels if require_all_labels else True
        return len(people) >= 2 and both and len(held) < len(sites)

    candidates = sorted((abs(len(groups) - target), site) for site, groups in people.items()
                        if usable(site))
    if not candidates:
        per_site = "; ".join(
            f"site {site}: " + ", ".join(f"{label} {sum(labels[g] == label for g in groups)}"
                                         for label in sorted(all_labels))
            for site, groups in sorted(people.items()))
        raise BenchError(
            f"task {task}: no site can be held out: every label must appear in the held-out "
            f"site and in the other sites, and at least two sites are needed (people per "
            f"site and label: {per_site or 'no sites'})")
    held_site = candidates[0][1]
    test = sorted(people[held_site])
    train = sorted(g for g in sites if sites[g] != held_site)
    return Split(task, dataset, salt, test_fraction, tuple(train), tuple(test),
                 variant=variant, held_out=(held_site,))


def split_label_counts(split: Split, samples: Sequence[Sample]) -> dict[str, dict[str, int]]:
    """People per label stratum on each side of the split: {"train": {...}, "test": {...}}."""
    test = set(split.test_groups)
    strata = _group_strata(samples, "fraction_stratum")
    counts: dict[str, dict[str, int]] = {"train": {}, "test": {}}
    for group, stratum in sorted(strata.items()):
        side = counts["test" if group in test else "train"]
        side[stratum] = side.get(stratum, 0) + 1
    return counts


def _check_labels_on_both_sides(split: Split, samples: Sequence[Sample]) -> None:
    test = set(split.test_groups)
    train_labels = {s.fraction_stratum for s in samples if s.group not in test}
    test_labels = {s.fraction_stratum for s in samples if s.group in test}
    all_labels = train_labels | test_labels
    if len(all_labels) > 1 and (train_labels != all_labels or test_labels != all_labels):
        counts = split_label_counts(split, samples)
        shown = "; ".join(f"{side}: " + ", ".join(f"{k} {counts[side].get(k, 0)}"
                                                  for k in sorted(all_labels))
                          for side in ("train", "test"))
        raise BenchError(
            f"task {split.task}: cohort too small to split: people per label stratum ({shown}); "
            "every stratum needs at least two people so that both sides hold it"
        )


def fraction_subset(split: Split, samples: Sequence[Sample], fraction: float, seed: int,
                    min_per_stratum: int = 1) -> tuple[str, ...]:
    """Training groups for (fraction, seed); nested in fraction, reproducible from the IDs."""
    train = set(split.train_groups)
    strata = _group_strata([s for s in samples if s.group in train], "fraction_stratum")
    members: dict[str, list[str]] = defaultdict(list)
    for group, stratum in strata.items():
        members[stratum].append(group)
    chosen: list[str] = []
    for stratum, groups in sorted(members.items()):
        ordered = sorted(groups, key=lambda g: _order_key(str(seed), g))
        k = min(len(ordered), max(min_per_stratum, math.ceil(fraction * len(ordered))))
        chosen += ordered[:k]
    if not chosen:
        raise BenchError(f"task {split.task}: empty training subset at fraction {fraction}")
    return tuple(sorted(chosen))


def subset_hash(groups: Iterable[str]) -> str:
    return digest(sorted(groups))


def write_json_atomic(path: Path, payload: object) -> None:
    """Write JSON so that a crash never leaves a half-written file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_manifest(manifest: Path) -> dict:
    """A split manifest, verified by content: well-formed JSON with string lists ``train`` and
    ``test`` (sorted, disjoint, no repeats) and a ``hash`` equal to the hash recomputed from
    those lists. A manifest edited by hand (lists changed, hash kept) is refused, naming the
    file and the field that does not verify."""
    manifest = Path(manifest)
    try:
        stored = json.loads(manifest.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BenchError(f"split manifest {manifest} is unreadable ({exc}); delete it to "
                         "re-create it") from None
    if not isinstance(stored, dict):
        raise BenchError(f"split manifest {manifest}: expected a JSON object, got "
                         f"{type(stored).__name__}; delete it to re-create it")
    for key in ("train", "test"):
        groups = stored.get(key)
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise BenchError(f"split manifest {manifest}: field {key!r} must be a list of "
                             f"group ids, got {str(groups)[:60]}; delete it to re-create it")
        if len(set(groups)) != len(groups):
            raise BenchError(f"split manifest {manifest}: field {key!r} lists a group twice; "
                             "the file was edited: restore it or delete it to start a new split")
        if groups != sorted(groups):
            raise BenchError(f"split manifest {manifest}: field {key!r} is not sorted as "
                             "brainbench writes it; the file was edited: restore it or delete "
                             "it to start a new split")
    both = sorted(set(stored["train"]) & set(stored["test"]))
    if both:
        raise BenchError(f"split manifest {manifest}: group(s) {both[:5]} are in both 'train' "
                         "and 'test'; the file was edited: restore it or delete it to start a "
                         "new split")
    if not isinstance(stored.get("hash"), str):
        raise BenchError(f"split manifest {manifest}: field 'hash' must be a string, got "
                         f"{stored.get('hash')!r}; delete it to re-create it")
    variant, held_out = stored.get("variant", ""), stored.get("held_out", [])
    if not isinstance(variant, str) or not isinstance(held_out, list) or not all(
            isinstance(h, str) for h in held_out):
        raise BenchError(f"split manifest {manifest}: fields 'variant' / 'held_out' must be a "
                         f"string and a list of strings, got {variant!r} / {held_out!r}; "
                         "delete it to re-create it")
    recomputed = _split_digest(stored["train"], stored["test"], variant, held_out)
    if recomputed != stored["hash"]:
        raise BenchError(f"split manifest {manifest}: field 'hash' ({stored['hash'][:12]}) does "
                         f"not verify: its 'train' and 'test' lists hash to {recomputed[:12]}; "
                         "the file was edited: restore it or delete it to start a new split")
    return stored


def record_split(split: Split, manifest: Path) -> None:
    """Write the manifest on first use; on later runs verify the split is unchanged: the
    manifest's lists (not only its stored hash) must equal the recomputed split."""
    if manifest.exists():
        stored = read_manifest(manifest)
        train, test = sorted(split.train_groups), sorted(split.test_groups)
        if stored["hash"] != split.hash or stored["train"] != train or stored["test"] != test:
            added = sorted(set(train + test) - set(stored["train"] + stored["test"]))
            removed = sorted(set(stored["train"] + stored["test"]) - set(train + test))
            moved = sorted((set(stored["train"]) & set(test)) | (set(stored["test"]) & set(train)))
            raise BenchError(
                f"split of task {split.task} differs from its manifest {manifest} (stored hash "
                f"{str(stored.get('hash'))[:12]}, now {split.hash[:12]}; people added: "
                f"{added[:5]}, removed: {removed[:5]}, moved between train and test: "
                f"{moved[:5]}). The cohort changed; results would not be "
                "comparable. Restore the data or delete the manifest to start a new split."
            )
        return
    try:
        write_json_atomic(manifest, split.to_manifest())
    except OSError as exc:
        raise BenchError(f"cannot write the split manifest {manifest}: {exc.strerror or exc} "
                         f"({exc.filename or manifest.parent}); pass a writable results folder "
                         "(--results / BRAINBENCH_RESULTS)") from None
