"""The shared training loop of the torch heads (MLP, attention-MIL) on frozen features.

Why one loop: the reference recipe (Adam for classification, AdamW for regression, the Cox
partial likelihood for survival, log1p for stroke days) is the same whatever sits in front of
the final layers; heads differ only in the module and in the input shape they accept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from brainbench.errors import BenchError
from brainbench.probes import ProbeFit, _survival_arrays

__all__ = ["TorchHead", "TrainParams", "cox_partial_likelihood", "ReferenceHead"]

#: The reference recipe (DESIGN.md section 3): 8 epochs, Adam lr 1e-4, weight decay 1e-5.
REFERENCE_PARAMS: dict[str, Any] = {"lr": 1e-4, "weight_decay": 1e-5, "epochs": 8,
                                    "batch_size": 16}

EpochMonitor = Callable[[int, "TorchHead"], None]


@dataclass(frozen=True)
class TrainParams:
    lr: float = 1e-4
    weight_decay: float = 1e-5
    epochs: int = 8
    batch_size: int = 16

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> "TrainParams":
        known = {k: params[k] for k in ("lr", "weight_decay", "epochs", "batch_size")
                 if k in params}
        out = cls(**{k: type(getattr(cls(), k))(v) for k, v in known.items()})
        if out.lr <= 0 or out.weight_decay < 0 or out.epochs < 1 or out.batch_size < 1:
            raise BenchError(f"invalid head training parameters {known}: need lr > 0, "
                             "weight_decay >= 0, epochs >= 1, batch_size >= 1")
        return out


class ReferenceHead(torch.nn.Module):
    """BrainDINO's head: LayerNorm -> Linear(d, d) -> GELU -> Linear(d, K)."""

    def __init__(self, dim: int, out: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.LayerNorm(dim), torch.nn.Linear(dim, dim),
                                       torch.nn.GELU(), torch.nn.Linear(dim, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def cox_partial_likelihood(risk: torch.Tensor, time: torch.Tensor,
                           event: torch.Tensor) -> torch.Tensor:
    """Negative Cox partial log-likelihood (Breslow ties), averaged over events."""
    order = torch.argsort(time, descending=True)
    risk, event, time = risk[order], event[order], time[order]
    log_cum = torch.logcumsumexp(risk, dim=0)
    # Breslow: tied times share the risk set of the earliest of them (the last in this order)
    _, inverse, counts = torch.unique_consecutive(time, return_inverse=True, return_counts=True)
    last = torch.cumsum(counts, 0) - 1
    log_risk_set = log_cum[last[inverse]]
    n_events = event.sum()
    if n_events == 0:
        return risk.sum() * 0.0
    return -((risk - log_risk_set) * event).sum() / n_events


class TorchHead:
    """Base: fit/predict/fit_info/classes_ like the linear probes, trained with torch."""

    head_name = "torch"

    def __init__(self, kind: str, *, seed: int, params: dict[str, Any] | None = None,
                 target_transform: str | None = None) -> None:
        if kind not in ("classification", "regression", "survival"):
            raise BenchError(f"no {self.head_name} head for task kind {kind!r}; valid: "
                             "classification, regression, survival")
        if target_transform not in (None, "log1p"):
            raise BenchError(f"unknown target_transform {target_transform!r}; valid: None, 'log1p'")
        self.kind = kind
        self.seed = int(seed)
        self.params = dict(REFERENCE_PARAMS, **(params or {}))
        self.train_params = TrainParams.from_dict(self.params)
        self.target_transform = target_transform
        self.classes_: np.ndarray | None = None
        self._module: torch.nn.Module | None = None
        self._fit_info: ProbeFit | None = None
        self._y_mean = 0.0
        self._y_std = 1.0
        self._input_shape: tuple[int, ...] | None = None
        self._n_train = 0

    # -- subclass hooks
    def _build(self, input_shape: tuple[int, ...], out: int) -> torch.nn.Module:
        raise NotImplementedError

    def _check_inputs(self, X: Any) -> np.ndarray:
        raise NotImplementedError

    # -- training
    def _targets(self, y: Any, n: int) -> tuple[torch.Tensor, ...]:
        if self.kind == "classification":
            labels = np.asarray(y)
            if labels.ndim != 1 or labels.shape[0] != n:
                raise BenchError(f"{n} feature rows but labels shaped {labels.shape}")
            self.classes_, index = np.unique(labels, return_inverse=True)
            if len(self.classes_) < 2:
                raise BenchError(f"classification training subset has only one class "
                                 f"{list(self.classes_)}; a head needs at least 2 classes")
            return (torch.as_tensor(index, dtype=torch.long),)
        if self.kind == "regression":
            target = np.asarray(y, dtype=np.float64)
            if target.shape != (n,) or not np.isfinite(target).all():
                raise BenchError(f"regression labels must be {n} finite numbers")
            if self.target_transform == "log1p":
                if (target <= -1).any():
                    raise BenchError("target_transform='log1p' needs labels > -1")
                target = np.log1p(target)
                # as the linear probe: never predict beyond the training targets' range
                # (expm1 of an extrapolated log value is absurd)
                self._log_range = (float(target.min()), float(target.max()))
            self._y_mean = float(target.mean())
            self._y_std = float(target.std()) or 1.0
            return (torch.as_tensor((target - self._y_mean) / self._y_std, dtype=torch.float32),)
        event, time = _survival_arrays(y)
        if event.shape[0] != n:
            raise BenchError(f"{n} feature rows but {event.shape[0]} survival labels")
        if not event.any():
            raise BenchError(f"survival training subset ({n} subjects) has no events; a Cox "
                             "head needs at least one")
        return (torch.as_tensor(time, dtype=torch.float32),
                torch.as_tensor(event, dtype=torch.float32))

    def _loss(self, out: torch.Tensor, targets: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if self.kind == "classification":
            return torch.nn.functional.cross_entropy(out, targets[0])
        if self.kind == "regression":
            return torch.nn.functional.mse_loss(out[:, 0], targets[0])
        return cox_partial_likelihood(out[:, 0], targets[0], targets[1])

    def fit(self, X: Any, y: Any, monitor: EpochMonitor | None = None) -> "TorchHead":
        """Train on (X, y); `monitor(epoch, self)` runs after each epoch (optuna pruning)."""
        features = self._check_inputs(X)
        n = features.shape[0]
        if n < 2:
            raise BenchError(f"cannot fit a {self.head_name} head on {n} training sample(s)")
        targets = self._targets(y, n)
        self._n_train = n
        out = len(self.classes_) if self.kind == "classification" else 1
        p = self.train_params
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny matrices on a shared machine: one thread is fastest
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                self._input_shape = tuple(features.shape[1:])
                module = self._build(self._input_shape, out)
            self._module = module
            optimiser_cls = torch.optim.Adam if self.kind == "classification" else torch.optim.AdamW
            optimiser = optimiser_cls(module.parameters(), lr=p.lr, weight_decay=p.weight_decay)
            x_all = torch.as_tensor(features, dtype=torch.float32)
            rng = np.random.default_rng(self.seed)
            # survival: the Cox partial likelihood within each minibatch's risk sets (as
            # DeepSurv trains); batches of >= 16 keep enough comparable pairs per step
            size = max(p.batch_size, 16) if self.kind == "survival" else p.batch_size
            batch = min(size, n)
            for epoch in range(p.epochs):
                module.train()
                order = rng.permutation(n)
                for start in range(0, n, batch):
                    idx = torch.as_tensor(order[start:start + batch])
                    if len(idx) < 2 and n >= 2 and start > 0:
                        continue  # a lone trailing sample gives a degenerate step
                    optimiser.zero_grad()
                    loss = self._loss(module(x_all[idx]), tuple(t[idx] for t in targets))
                    loss.backward()
                    optimiser.step()
                module.eval()
                if monitor is not None:
                    self._fit_info = self._info("training")
                    monitor(epoch, self)
        finally:
            torch.set_num_threads(previous_threads)
        self._fit_info = self._info("fixed parameters (no search)")
        return self

    def _info(self, selection: str) -> ProbeFit:
        hyper = {k: self.params[k] for k in sorted(self.params)}
        if self.target_transform:
            hyper["target_transform"] = self.target_transform
        return ProbeFit(head=self.head_name, hyperparameters=hyper, selection=selection,
                        n_train=self._n_train)

    @property
    def fit_info(self) -> ProbeFit:
        if self._fit_info is None:
            raise BenchError(f"{type(self).__name__} is not fitted; call fit(X, y) first")
        return self._fit_info

    def set_fit_info(self, info: ProbeFit) -> None:
        self._fit_info = info

    def predict(self, X: Any) -> np.ndarray:
        """Probabilities (n, K) in classes_ order, values (n,) or Cox risk scores (n,)."""
        if self._module is None:
            raise BenchError(f"{type(self).__name__} is not fitted; call fit(X, y) first")
        features = self._check_inputs(X)
        if tuple(features.shape[1:]) != self._input_shape:
            raise BenchError(f"inputs shaped {features.shape[1:]} per sample, but the head was "
                             f"fitted on {self._input_shape}")
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                out = self._module(torch.as_tensor(features, dtype=torch.float32)).double()
        finally:
            torch.set_num_threads(previous_threads)
        if self.kind == "classification":
            return torch.softmax(out, dim=1).numpy()
        values = out[:, 0].numpy()
        if self.kind == "regression":
            values = values * self._y_std + self._y_mean
            if self.target_transform == "log1p":
                values = np.expm1(np.clip(values, *self._log_range))
        return np.asarray(values, dtype=np.float64)


def check_array(X: Any, ndim: int, what: str) -> np.ndarray:
    try:
        array = np.asarray(X, dtype=np.float32)
    except (TypeError, ValueError):
        raise BenchError(f"{what} inputs must be numeric arrays") from None
    if array.ndim != ndim:
        raise BenchError(f"{what} inputs must be {ndim}-D, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise BenchError(f"{what} inputs contain NaN or inf")
    return array
