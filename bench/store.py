"""The results store: one row per (cell, metric), with provenance, through SQLAlchemy.

A cell is (backbone, weights id, task, dataset, data source, profile, head, fraction, seed).
All rows of a cell, and the cell's per-sample test predictions, are written in one
transaction: a crash leaves either the whole cell or nothing. The default URL is an SQLite
file; a server URL (postgresql://...) works the same for a team sharing a store.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
from sqlalchemy import (Column, Float, Integer, MetaData, String, Table, Text, create_engine,
                        delete, select)
from sqlalchemy.engine import Engine

from brainbench.errors import BenchError

STORE_SCHEMA = 1

metadata = MetaData()

results_table = Table(
    "results", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("cell_id", String(64), nullable=False, index=True),
    Column("backbone", String(128), nullable=False, index=True),
    Column("weights_id", String(128), nullable=False),
    Column("weights_status", String(32), nullable=False),
    Column("weights_sha256", String(64), nullable=False),
    Column("task", String(64), nullable=False, index=True),
    Column("dataset", String(64), nullable=False),
    Column("data_source", Text, nullable=False),
    Column("profile", String(32), nullable=False),
    Column("head", String(64), nullable=False),
    Column("fraction", Float, nullable=False),
    Column("seed", Integer, nullable=False),
    Column("metric", String(64), nullable=False),
    Column("value", Float, nullable=True),
    Column("n_train", Integer, nullable=False),
    Column("n_test", Integer, nullable=False),
    Column("hyperparameters", Text, nullable=False),
    Column("selection", Text, nullable=False),
    Column("code_version", String(64), nullable=False),
    Column("config_hash", String(64), nullable=False),
    Column("split_hash", String(64), nullable=False),
    Column("subset_hash", String(64), nullable=False),
    Column("cache_key", String(64), nullable=False),
    Column("created_at", String(32), nullable=False),
)

predictions_table = Table(
    "predictions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("cell_id", String(64), nullable=False, index=True),
    Column("sample_id", String(256), nullable=False),
    Column("target", Text, nullable=False),
    Column("prediction", Text, nullable=False),
)


@dataclass(frozen=True)
class Cell:
    """Identity and provenance of one fitted probe evaluated on the test split."""

    backbone: str
    weights_id: str
    weights_status: str
    weights_sha256: str
    task: str
    dataset: str
    data_source: str
    profile: str
    head: str
    fraction: float
    seed: int
    n_train: int
    n_test: int
    hyperparameters: dict[str, Any]
    selection: str
    code_version: str
    config_hash: str
    split_hash: str
    subset_hash: str
    cache_key: str

    @property
    def cell_id(self) -> str:
        from brainbench.splits import digest

        return digest({"backbone": self.backbone, "weights_id": self.weights_id,
                       "task": self.task, "dataset": self.dataset,
                       "data_source": self.data_source, "profile": self.profile,
                       "head": self.head, "fraction": self.fraction, "seed": self.seed,
                       "config_hash": self.config_hash})


def default_url(results_dir: Path) -> str:
    return f"sqlite:///{Path(results_dir).resolve() / 'results.db'}"


class ResultStore:
    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.engine: Engine = create_engine(url, future=True)
            metadata.create_all(self.engine)
        except Exception as exc:
            raise BenchError(f"cannot open results store {url}: {exc}") from None
        self.url = url

    def has_cell(self, cell_id: str) -> bool:
        with self.engine.connect() as conn:
            row = conn.execute(select(results_table.c.id)
                               .where(results_table.c.cell_id == cell_id).limit(1)).first()
        return row is not None

    def write_cell(self, cell: Cell, metrics: dict[str, float],
                   predictions: Iterable[tuple[str, Any, Any]]) -> None:
        """Replace the cell's rows and predictions atomically."""
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        base = asdict(cell)
        base["hyperparameters"] = json.dumps(cell.hyperparameters, sort_keys=True, default=str)
        rows = [dict(base, cell_id=cell.cell_id, metric=name,
                     value=None if value != value else float(value), created_at=now)
                for name, value in metrics.items()]
        preds = [{"cell_id": cell.cell_id, "sample_id": sample_id,
                  "target": json.dumps(target, default=str),
                  "prediction": json.dumps(prediction, default=float)}
                 for sample_id, target, prediction in predictions]
        with self.engine.begin() as conn:
            conn.execute(delete(results_table).where(results_table.c.cell_id == cell.cell_id))
            conn.execute(delete(predictions_table)
                         .where(predictions_table.c.cell_id == cell.cell_id))
            conn.execute(results_table.insert(), rows)
            if preds:
                conn.execute(predictions_table.insert(), preds)

    def frame(self, **filters: Any) -> pd.DataFrame:
        """All result rows (optionally filtered by column == value, or column in list)."""
        query = select(results_table)
        for column, wanted in filters.items():
            if wanted is None:
                continue
            col = results_table.c[column]
            query = query.where(col.in_(wanted) if isinstance(wanted, (list, tuple, set))
                                else col == wanted)
        with self.engine.connect() as conn:
            return pd.read_sql(query, conn)
