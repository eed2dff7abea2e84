"""Named probe protocols: head + feature variant + aggregation + search space, declared per run.

A result row's ``head`` column holds the protocol name, and the run's config hash covers the
whole protocol and, for searched protocols, the trial budget, so two protocols (or budgets) never
overwrite or average into each other. Wherever results are shown they carry `protocol_label`:
the name, plus ``[N trials]`` for a searched protocol (the budget is read from the row's
``hyperparameters``, which every searched cell records).

Feature variants (per slice, per modality, before aggregation):
- ``cls``: the final-norm CLS token.
- ``cls+patch_mean``: CLS concatenated with the mean patch token.
- ``cls_last4``: the CLS of the last four blocks, each through the final norm, concatenated
  (DINOv2 linear evaluation). Needs a backbone that provides tokens ``cls_prev3..1``.

Aggregation: ``mean``/``max`` over slices then the mean over modalities gives one vector per
sample; ``attention`` keeps the per-slice tokens (n, modalities, slices, d) for the
attention-MIL head.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from brainbench.aggregate import AGGREGATORS
from brainbench.errors import BenchError
from brainbench.registry import Registry

VARIANTS: dict[str, tuple[str, ...]] = {
    "cls": ("cls",),
    "cls+patch_mean": ("cls", "patch_mean"),
    "cls_last4": ("cls_prev3", "cls_prev2", "cls_prev1", "cls"),
}


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter (an optuna distribution)."""

    kind: str  # "float" | "int" | "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any, name: str) -> Any:
        if self.kind == "float":
            return trial.suggest_float(name, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(name, list(self.choices))


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    head: str  # a name in brainbench.heads.HEADS
    variant: str = "cls"  # key of VARIANTS
    aggregation: str = "mean"  # "mean" | "max" | "attention"
    search_space: Mapping[str, Param] = field(default_factory=dict)  # empty: no optuna
    defaults: Mapping[str, Any] = field(default_factory=dict)  # the fallback / fixed params

    @property
    def tokens(self) -> tuple[str, ...]:
        return VARIANTS[self.variant]

    @property
    def searched(self) -> bool:
        return bool(self.search_space)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["search_space"] = {k: asdict(v) for k, v in sorted(self.search_space.items())}
        out["defaults"] = dict(sorted(self.defaults.items()))
        return out


PROTOCOLS: Registry[Protocol] = Registry("protocol")


def register_protocol(protocol: Protocol) -> Protocol:
    """Make `protocol` runnable by name (``--protocol``); a new head's module may call this
    for the protocol that uses it, so the head needs no edit here."""
    return PROTOCOLS.register(protocol.name, protocol)


#: Torch-head search space around the reference recipe (lr 1e-4, wd 1e-5, 8 epochs).
TORCH_SPACE = {
    "lr": Param("float", 1e-5, 3e-3, log=True),
    "weight_decay": Param("float", 1e-6, 1e-1, log=True),
    "epochs": Param("int", 4, 64, log=True),
    "batch_size": Param("categorical", choices=(8, 16, 32)),
}
REFERENCE = {"lr": 1e-4, "weight_decay": 1e-5, "epochs": 8, "batch_size": 16}

for _protocol in (
    Protocol("linear", "DINOv2-style linear probe on the slice-mean final CLS (logistic / ridge "
             "/ PCA+ridge Cox, regularisation by inner CV)", head="linear"),
    Protocol("linear_cls_patch", "linear probe on CLS + mean patch token", head="linear",
             variant="cls+patch_mean"),
    Protocol("linear_last4", "linear probe on the last four blocks' CLS concatenated (DINOv2 "
             "linear evaluation)", head="linear", variant="cls_last4"),
    Protocol("paper", "BrainDINO reference head (LN-Linear-GELU-Linear) on the slice-mean CLS; "
             "Adam (cls) / AdamW (reg) / Cox likelihood (survival); optuna TPE on an inner "
             "validation split of the label subset; never the test split", head="mlp",
             search_space=TORCH_SPACE, defaults=REFERENCE),
    Protocol("attention", "gated attention-MIL pooling over per-slice CLS tokens, then the "
             "reference head; optuna as in paper", head="attention", aggregation="attention",
             search_space={**TORCH_SPACE, "attention_dim": Param("categorical",
                                                                 choices=(64, 128, 256))},
             defaults={**REFERENCE, "attention_dim": 128}),
    Protocol("knn", "cosine kNN on L2-normalised slice-mean CLS; k by inner CV", head="knn"),
):
    register_protocol(_protocol)


def get_protocol(name: str) -> Protocol:
    return PROTOCOLS.get(name)


def budget_of(hyperparameters: Mapping[str, Any] | str | None) -> int | None:
    """The optuna trial budget a stored row records (``trials``), or None."""
    if isinstance(hyperparameters, str):
        try:
            hyperparameters = json.loads(hyperparameters or "{}")
        except json.JSONDecodeError:
            return None
    trials = (hyperparameters or {}).get("trials") if isinstance(hyperparameters, Mapping) \
        else None
    return int(trials) if isinstance(trials, (int, float)) and not isinstance(trials, bool) \
        and trials >= 1 else None


def is_searched(name: str) -> bool:
    """Whether ``name`` is a registered protocol with an optuna search space."""
    return name in PROTOCOLS and PROTOCOLS.get(name).searched


def protocol_label(head: str, hyperparameters: Mapping[str, Any] | str | None = None,
                   trials: int | None = None) -> str:
    """``paper[20 trials]`` for a searched protocol, the plain name otherwise.

    The budget comes from ``trials`` or else from the row's ``hyperparameters``; a searched
    protocol whose budget cannot be recovered is ``paper[? trials]``.
    """
    trials = trials if trials is not None else budget_of(hyperparameters)
    if trials is None:
        return f"{head}[? trials]" if is_searched(head) else str(head)
    return f"{head}[{trials} trial{'s' if trials != 1 else ''}]"


def check_tokens(protocol: Protocol, available: Sequence[str], backbone: str) -> None:
    missing = [t for t in protocol.tokens if t not in available]
    if missing:
        raise BenchError(f"protocol {protocol.name!r} (feature variant {protocol.variant!r}) "
                         f"needs tokens {list(protocol.tokens)}, but backbone {backbone!r} "
                         f"returns only {list(available)}; choose another protocol")


def protocol_input(protocol: Protocol, per_modality: Sequence[Mapping[str, np.ndarray]]
                   ) -> np.ndarray:
    """One sample's head input: (d',) vector, or (modalities, slices, d') for attention."""
    stacked = []
    for tokens in per_modality:
        try:
            stacked.append(np.concatenate([np.asarray(tokens[t], dtype=np.float32)
                                           for t in protocol.tokens], axis=1))
        except KeyError as exc:
            raise BenchError(f"cached features lack token {exc.args[0]!r} needed by protocol "
                             f"{protocol.name!r}") from None
    if protocol.aggregation == "attention":
        if len({a.shape for a in stacked}) != 1:
            raise BenchError("attention pooling needs the same number of slices per modality, "
                             f"got {[a.shape for a in stacked]}")
        return np.stack(stacked)
    if protocol.aggregation not in AGGREGATORS:
        raise BenchError(f"protocol {protocol.name!r}: unknown aggregation "
                         f"{protocol.aggregation!r}; valid: {sorted(AGGREGATORS)} or 'attention'")
    return np.mean([AGGREGATORS[protocol.aggregation](a) for a in stacked], axis=0)
