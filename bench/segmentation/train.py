"""Fitting a head on frozen tokens, and running it over a whole volume.

Fixed settings, no selection step: nothing is tuned, so the test split cannot leak into a
choice. Minibatches are drawn from the (foreground-aware) training slices with a seeded
generator; the loss is soft Dice (MONAI) + binary cross-entropy per region, the usual
region-based BraTS objective (WT, TC, ET overlap, so each is its own sigmoid). The heads
themselves are `brainbench.heads.segmentation` ("linear", "multiscale"); this is their fit.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Sequence, TypeVar

import numpy as np
import torch
from torch import nn

from brainbench.heads._torch import one_thread  # one intra-op thread: see its docstring
from brainbench.segmentation.data import to_volume

T = TypeVar("T")
#: a head's initialisation seeds torch's global generator (inside fork_rng): one at a time
HEAD_INIT_LOCK = threading.Lock()


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 200
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    threshold: float = 0.5  # sigmoid probability above which a voxel is in a region

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TrainInfo:
    steps: int
    n_slices: int
    seconds: float
    final_loss: float


def train_head(head: nn.Module, inputs: Sequence[np.ndarray], targets: np.ndarray,
               config: TrainConfig, seed: int) -> TrainInfo:
    """inputs: per layer (N, C, h, w) float16; targets: (N, R, H, W) bool. Trains `head` only."""
    with one_thread():
        return _train(head, inputs, targets, config, seed)


#: memory the training grids of head fits running at once may take (every thread's cell): at
#: the paper profile a linear-head cell holds ~3.6 MB per training slice (4 contrasts' float16
#: tokens and their float32 copy), a multiscale one 4x that, so cells of hundreds of training
#: subjects train one at a time
HEAD_THREADS_MEMORY_BYTES = 4e9


def head_threads(n_jobs: int, job_bytes: float = 0.0) -> int:
    """Threads for `n_jobs` head fits of up to `job_bytes` of training grids each: one per
    intra-op thread torch may use here (so a Ray worker limited to one CPU stays sequential),
    at most one per job, and no more than fit in `HEAD_THREADS_MEMORY_BYTES` (one at least)."""
    by_memory = int(HEAD_THREADS_MEMORY_BYTES // job_bytes) if job_bytes > 0 else n_jobs
    return max(1, min(n_jobs, torch.get_num_threads(), by_memory))


def run_head_jobs(jobs: Sequence[Callable[[], T]], threads: int) -> Iterator[T]:
    """Each job's result, in job order, the jobs run on `threads` threads with one intra-op
    thread each.

    Why threads: a head step is milliseconds of small single-threaded ops that release the
    GIL, so on two cores two heads trained ~1.6-2.4x faster side by side than one after the
    other, bit for bit the same (each fit draws from its own generator, and every op runs on
    the calling thread). Jobs that build a head take `HEAD_INIT_LOCK` around it.
    """
    with one_thread():
        if threads <= 1:
            for job in jobs:
                yield job()
            return
        with ThreadPoolExecutor(threads, thread_name_prefix="brainbench-head") as pool:
            yield from pool.map(lambda job: job(), jobs)


def _train(head: nn.Module, inputs: Sequence[np.ndarray], targets: np.ndarray,
           config: TrainConfig, seed: int) -> TrainInfo:
    started = time.perf_counter()
    n = targets.shape[0]
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(head.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    from monai.losses import DiceLoss  # lazy: see brainbench.preprocess.volume_to_input

    dice = DiceLoss(sigmoid=True, batch=True)
    bce = nn.BCEWithLogitsLoss()
    batch = min(config.batch_size, n)
    # float32 once: float16 gathers and maths are slow on CPU (the cache keeps float16)
    layers = [torch.from_numpy(layer).float() for layer in inputs]
    masks = torch.from_numpy(targets.astype(np.uint8))
    head.train()
    loss_value = float("nan")
    for _ in range(config.steps):
        index = torch.randperm(n, generator=generator)[:batch]
        grids = [layer.index_select(0, index) for layer in layers]
        truth = masks.index_select(0, index).float()
        logits = head(grids)
        loss = dice(logits, truth) + bce(logits, truth)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        loss_value = float(loss.detach())
    head.eval()
    head.requires_grad_(False)
    return TrainInfo(config.steps, n, time.perf_counter() - started, loss_value)


def predict_volume(head: nn.Module, inputs: Sequence[np.ndarray], shape: tuple[int, int, int],
                   threshold: float = 0.5, batch_size: int = 32) -> np.ndarray:
    """Slice by slice over the whole slice grid, stacked and resampled to the label's grid
    -> (R, X, Y, Z) bool."""
    head.eval()
    n = inputs[0].shape[0]
    chunks = []
    with torch.inference_mode(), one_thread():
        for start in range(0, n, batch_size):
            grids = [torch.from_numpy(layer[start:start + batch_size]).float() for layer in inputs]
            chunks.append(torch.sigmoid(head(grids)))
        probabilities = to_volume(torch.cat(chunks), shape)
    return (probabilities > threshold).numpy()
