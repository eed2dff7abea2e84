"""The shared training loop of the torch heads (MLP, attention-MIL) on frozen features.

Why one loop: the reference recipe (Adam for classification, AdamW for regression, the Cox
partial likelihood for survival, log1p for stroke days) is the same whatever sits in front of
the final layers; heads differ only in the module and in the input shape they accept. torch is
imported when a head trains, not when the registry loads.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np

from brainbench.errors import BenchError
from brainbench.heads.base import Head, Monitor
from brainbench.heads.validation import check_features, check_targets
from brainbench.kinds import probe_kinds

__all__ = ["TorchHead", "TrainParams", "cox_partial_likelihood", "one_thread"]

#: The reference recipe (DESIGN.md section 3): 8 epochs, Adam lr 1e-4, weight decay 1e-5.
REFERENCE_PARAMS: dict[str, Any] = {"lr": 1e-4, "weight_decay": 1e-5, "epochs": 8,
                                    "batch_size": 16}


@dataclass(frozen=True)
class TrainParams:
    lr: float = 1e-4
    weight_decay: float = 1e-5
    epochs: int = 8
    batch_size: int = 16

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> "TrainParams":
        known = {k: params[k] for k in ("lr", "weight_decay", "epochs", "batch_size")
                 if k in params}
        out = cls(**{k: type(getattr(cls(), k))(v) for k, v in known.items()})
        if out.lr <= 0 or out.weight_decay < 0 or out.epochs < 1 or out.batch_size < 1:
            raise BenchError(f"invalid head training parameters {known}: need lr > 0, "
                             "weight_decay >= 0, epochs >= 1, batch_size >= 1")
        return out


@contextmanager
def one_thread() -> Iterator[None]:
    """Head steps are milliseconds of small ops: a second intra-op thread only adds
    synchronisation, and on a busy shared 2-core machine it made a linear segmentation-head
    step 20-50x slower (6 ms CPU per step with one thread vs 100-340 ms wall with two)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cox_partial_likelihood(risk: Any, time: Any, event: Any) -> Any:
    """Negative Cox partial log-likelihood (Breslow ties), averaged over events (tensors)."""
    import torch

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


class TorchHead(Head):
    """Base of the trained probe heads: one module, the reference recipe, fixed params.

    Subclasses give the input layout (``ndim``, ``layout``) and ``_build``; the search (not
    the head) scores validation, through ``monitor`` after each epoch.
    """

    kinds = probe_kinds()
    ndim = 2
    layout = "(n, d)"

    def __init__(self, kind: str, *, seed: int, params: Mapping[str, Any] | None = None,
                 target_transform: str | None = None) -> None:
        super().__init__(kind, seed=seed, params=dict(REFERENCE_PARAMS, **(params or {})),
                         target_transform=target_transform)
        self.train_params = TrainParams.from_dict(self.params)
        self._module: Any = None
        self._y_mean = 0.0
        self._y_std = 1.0
        self._input_shape: tuple[int, ...] | None = None
        self._n_train = 0

    # -- subclass hooks
    def _build(self, input_shape: tuple[int, ...], out: int) -> Any:
        """The torch module for inputs shaped (n, *input_shape) and `out` outputs."""
        raise NotImplementedError

    def _check_inputs(self, X: Any) -> np.ndarray:
        return check_features(X, ndim=self.ndim, layout=self.layout, dtype=np.float32,
                              sample_shape=self._input_shape)

    # -- training
    def _targets(self, y: Any, n: int) -> tuple[Any, ...]:
        import torch

        checked = check_targets(self.kind, y, n, self.who)
        if self.kind == "classification":
            self.classes_ = checked.classes
            return (torch.as_tensor(checked.index, dtype=torch.long),)
        if self.kind == "regression":
            target = self._fit_target(checked)
            self._y_mean = float(target.mean())
            self._y_std = float(target.std()) or 1.0
            return (torch.as_tensor((target - self._y_mean) / self._y_std, dtype=torch.float32),)
        event, time = checked
        return (torch.as_tensor(time, dtype=torch.float32),
                torch.as_tensor(event, dtype=torch.float32))

    def _loss(self, out: Any, targets: tuple[Any, ...]) -> Any:
        from torch.nn import functional as F

        if self.kind == "classification":
            return F.cross_entropy(out, targets[0])
        if self.kind == "regression":
            return F.mse_loss(out[:, 0], targets[0])  # the training loss, not the selection
        return cox_partial_likelihood(out[:, 0], targets[0], targets[1])

    def fit(self, X: Any, y: Any, monitor: Monitor | None = None,
            groups: Any = None) -> "TorchHead":
        """Train on (X, y); `monitor(epoch, self)` runs after each epoch (optuna pruning).
        Fixed parameters, no inner selection, so ``groups`` (persons) is not needed."""
        import torch

        features = check_features(X, ndim=self.ndim, layout=self.layout, dtype=np.float32)
        n = features.shape[0]
        targets = self._targets(y, n)
        self._n_train = n
        out = len(self.classes_) if self.kind == "classification" else 1
        p = self.train_params
        with one_thread():  # tiny matrices on a shared machine: one thread is fastest
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
                    self._info("training")
                    monitor(epoch, self)
        self._info("fixed parameters (no search)")
        return self

    def _info(self, selection: str) -> None:
        self._record_fit({k: self.params[k] for k in sorted(self.params)}, selection,
                         self._n_train)

    def predict(self, X: Any) -> np.ndarray:
        """Probabilities (n, K) in classes_ order, values (n,) or Cox risk scores (n,)."""
        import torch

        self.check_is_fitted()
        features = self._check_inputs(X)
        with torch.inference_mode(), one_thread():
            out = self._module(torch.as_tensor(features, dtype=torch.float32)).double()
        if self.kind == "classification":
            return torch.softmax(out, dim=1).numpy()
        values = out[:, 0].numpy()
        if self.kind == "regression":
            values = self._predict_target(values * self._y_std + self._y_mean)
        return np.asarray(values, dtype=np.float64)
