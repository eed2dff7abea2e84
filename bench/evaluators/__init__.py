"""Evaluators consume prepared tasks and cached features; a task kind names its evaluator.

A new evaluator is one module that subclasses `Evaluator` and registers it in `EVALUATORS`
(plus its import below).
"""

from __future__ import annotations

from typing import Any, Callable

from brainbench.evaluators.base import EvaluatedCell, Evaluator
from brainbench.registry import Registry

EVALUATORS: Registry[Callable[..., Evaluator]] = Registry("evaluator")


def make_evaluator(name: str, **options: Any) -> Evaluator:
    return EVALUATORS.get(name)(**options)


from brainbench.evaluators import probe, segmentation  # noqa: E402,F401  (register)

__all__ = ["EVALUATORS", "EvaluatedCell", "Evaluator", "make_evaluator"]
