"""The results store: one row per (cell, metric), with provenance, through SQLAlchemy.

A cell is (backbone, weights id, task, dataset, data source, profile, head, fraction, seed).
All rows of a cell, and the cell's per-sample test predictions, are written in one
transaction: a crash leaves either the whole cell or nothing. The default URL is an SQLite
file; a server URL (postgresql+psycopg://..., or postgresql://... which names the same
psycopg 3 driver) works the same for a team sharing a store.

This module owns every read and write of the store's tables (no other module builds SQL):
`write_cell` / `write_cells` write, `frame`, `cells`, `predictions` and `has_cell` read.

Schema versions. The table ``brainbench_schema`` holds one row (name ``store``) with the
store's schema version; `STORE_SCHEMA` is the version this code writes. Opening a store runs,
in one transaction, the migrations from its version up to `STORE_SCHEMA` (`MIGRATIONS`; step
i takes version i + 1 to i + 2) and stamps the new version: a failure leaves the store as it
was. A store of the first release (tables ``results`` and ``predictions``, no version table) is
version 1. A store of a newer version, or one whose tables lack columns this code needs, is
refused with a message saying what to do. Migrations are plain SQLAlchemy Core, so they run on
SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
import weakref
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import pandas as pd
from sqlalchemy import (Column, Float, Index, Integer, MetaData, String, Table, Text,
                        create_engine, delete, event, func, inspect, make_url, select)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import (DatabaseError, IntegrityError, OperationalError, ProgrammingError,
                            SQLAlchemyError)

from brainbench.errors import BenchError

#: The schema version this code reads and writes (see the module docstring).
STORE_SCHEMA = 5
SCHEMA_ROW = "store"
PREDICTIONS_CHUNK = 500  # cell ids per IN query (SQLite allows 999 bound parameters)
_OPEN_ATTEMPTS = 5  # a concurrent opener migrating the same store: retry, then see it done
#: SQLite between local processes: how long one statement waits for another process's write
#: lock (sqlite3's busy timeout), and how often a write that still finds the store locked is
#: retried (with backoff) before it is refused with a BenchError
SQLITE_TIMEOUT_S = 30.0
_WRITE_ATTEMPTS = 4
_WRITE_BACKOFF_S = 0.5

#: what a damaged or foreign database file raises at the driver or SQLAlchemy level (the CLI
#: turns these into a message naming the store instead of a traceback)
DATABASE_ERRORS: tuple[type[BaseException], ...] = (sqlite3.DatabaseError, DatabaseError)

metadata = MetaData()

schema_table = Table(
    "brainbench_schema", metadata,
    Column("name", String(32), primary_key=True),
    Column("version", Integer, nullable=False),
)

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
    # schema 4: the numeric precision the features were computed in ("fp32", "bf16"); NULL in
    # stores before schema 4, which were all fp32
    Column("precision", String(16), nullable=True),
    # schema 5: the split variant the cell was evaluated on (e.g. "site-held-out:IOP"); NULL
    # is the task's standard stratified split, the only one stores before schema 5 hold
    Column("split", String(128), nullable=True),
)
# schema 2: a cell holds each metric once (also what a concurrent second writer of the same
# cell on a server database now runs into, instead of silently doubling the cell's rows)
cell_metric_index = Index("ux_results_cell_metric", results_table.c.cell_id,
                          results_table.c.metric, unique=True)

predictions_table = Table(
    "predictions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("cell_id", String(64), nullable=False, index=True),
    Column("sample_id", String(256), nullable=False),
    Column("target", Text, nullable=False),
    Column("prediction", Text, nullable=False),
    # the person (split group) the sample belongs to: statistics resample people, not samples
    # (ADNI visits, the four sequences of one BraTS subject). NULL in stores before schema 3.
    Column("person", String(256), nullable=True),
)

#: schema 4: representation analyses (brainbench.analyses): one row per (analysis, metric),
#: versioned by the analysis's own version, with its interval, chance level and provenance
analyses_table = Table(
    "analyses", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("analysis_id", String(64), nullable=False, index=True),
    Column("backbone", String(128), nullable=False, index=True),
    Column("weights_id", String(128), nullable=False),
    Column("weights_status", String(32), nullable=False),
    Column("analysis", String(64), nullable=False),
    Column("dataset", String(64), nullable=False),
    Column("data_source", Text, nullable=False),
    Column("profile", String(32), nullable=False),
    Column("precision", String(16), nullable=False),
    Column("metric", String(128), nullable=False),
    Column("value", Float, nullable=True),
    Column("lower", Float, nullable=True),
    Column("upper", Float, nullable=True),
    Column("chance", Float, nullable=True),
    Column("version", Integer, nullable=False),
    Column("code_version", String(64), nullable=False),
    Column("details", Text, nullable=False),
    Column("created_at", String(32), nullable=False),
)
analysis_metric_index = Index("ux_analyses_analysis_metric", analyses_table.c.analysis_id,
                              analyses_table.c.metric, unique=True)

DATA_TABLES = (results_table, predictions_table)
#: tables a migration step creates whole (a store older than the step lacks them)
ADDED_TABLES = {analyses_table.name: 4}


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
    precision: str = "fp32"  # what the features were computed in (brainbench.precision)
    split: str = ""  # split variant ("site-held-out:<site>"); "" = the task's standard split

    @property
    def cell_id(self) -> str:
        from brainbench.splits import digest

        identity = {"backbone": self.backbone, "weights_id": self.weights_id,
                    "task": self.task, "dataset": self.dataset,
                    "data_source": self.data_source, "profile": self.profile,
                    "head": self.head, "fraction": self.fraction, "seed": self.seed,
                    "config_hash": self.config_hash}
        if self.precision != "fp32":  # fp32 cells keep the identities stores already hold
            identity["precision"] = self.precision
        if self.split:  # standard-split cells keep the identities stores already hold
            identity["split"] = self.split
        return digest(identity)


Prediction = tuple[str, Any, Any]  # (sample id, target, prediction), JSON-decoded


@dataclass(frozen=True)
class StoredCell:
    """One cell with its metric values, test predictions and timestamp.

    Written by `ResultStore.write_cells` (``created_at`` None: now; the row key is always the
    recomputed ``cell.cell_id``); returned by `ResultStore.cells` with ``cell_id`` as stored.
    """

    cell: Cell
    metrics: Mapping[str, float | None]
    predictions: Sequence[Prediction] = ()
    created_at: str | None = None
    cell_id: str = ""
    persons: Mapping[str, str] | None = None  # sample id -> person; None: unknown


@dataclass(frozen=True)
class AnalysisResult:
    """One metric of one representation analysis of one backbone (brainbench.analyses).

    ``chance``: the metric's chance level on these data (None: not applicable); ``version``:
    the analysis's own method version; ``details``: provenance (n, settings, seeds, figure
    paths relative to the results folder, the other backbone of a pairwise analysis)."""

    backbone: str
    weights_id: str
    weights_status: str
    analysis: str
    dataset: str
    data_source: str
    profile: str
    precision: str
    metric: str
    value: float | None
    lower: float | None
    upper: float | None
    chance: float | None
    version: int
    code_version: str
    details: Mapping[str, Any] = field(default_factory=dict)
    created_at: str | None = None

    @property
    def analysis_id(self) -> str:
        from brainbench.splits import digest

        return digest({"backbone": self.backbone, "weights_id": self.weights_id,
                       "analysis": self.analysis, "dataset": self.dataset,
                       "data_source": self.data_source, "profile": self.profile,
                       "precision": self.precision, "version": self.version})


# --------------------------------------------------------------------------- migrations


@dataclass(frozen=True)
class Migration:
    """One step from schema version ``source`` to ``source + 1`` (runs inside the open
    transaction). ``adds`` names the columns the step adds per table: a store older than the
    step may lack them."""

    source: int
    description: str
    apply: Callable[[Connection, str], None]
    adds: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def _unique_cell_metric(conn: Connection, url: str) -> None:
    """v1 -> v2: a unique index on results(cell_id, metric)."""
    c = results_table.c
    doubled = conn.execute(select(c.cell_id, c.metric).group_by(c.cell_id, c.metric)
                           .having(func.count() > 1).limit(3)).all()
    if doubled:
        examples = ", ".join(f"cell {cell_id} metric {metric}" for cell_id, metric in doubled)
        raise BenchError(
            f"results store {url}: cannot migrate store schema 1 to 2: some cells hold the same "
            f"metric twice (e.g. {examples}), which happens when two runs wrote the same cell "
            "at once; nothing was changed. Delete those cells' rows from the tables results and "
            "predictions (DELETE ... WHERE cell_id = '...') and re-run them, or use a new "
            "results folder (--results DIR or --db URL)")
    cell_metric_index.create(conn, checkfirst=True)


def _person_column(conn: Connection, url: str) -> None:
    """v2 -> v3: predictions.person (nullable; older predictions keep NULL = person unknown,
    and are resampled per sample as before)."""
    column = predictions_table.c.person
    type_ = column.type.compile(dialect=conn.dialect)
    conn.exec_driver_sql(f"ALTER TABLE predictions ADD COLUMN person {type_}")


def _precision_and_analyses(conn: Connection, url: str) -> None:
    """v3 -> v4: results.precision (NULL = fp32, what every earlier run used) and the table
    of representation analyses."""
    type_ = results_table.c.precision.type.compile(dialect=conn.dialect)
    conn.exec_driver_sql(f"ALTER TABLE results ADD COLUMN precision {type_}")
    analyses_table.create(conn, checkfirst=True)


def _split_column(conn: Connection, url: str) -> None:
    """v4 -> v5: results.split (NULL = the task's standard split, what every earlier run used)."""
    type_ = results_table.c.split.type.compile(dialect=conn.dialect)
    conn.exec_driver_sql(f"ALTER TABLE results ADD COLUMN split {type_}")


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "unique index ux_results_cell_metric on results(cell_id, metric)",
              _unique_cell_metric),
    Migration(2, "column predictions.person (the split group each test sample belongs to)",
              _person_column, adds={"predictions": ("person",)}),
    Migration(3, "column results.precision and table analyses", _precision_and_analyses,
              adds={"results": ("precision",)}),
    Migration(4, "column results.split (the split variant of a cell)", _split_column,
              adds={"results": ("split",)}),
)
assert [m.source for m in MIGRATIONS] == list(range(1, STORE_SCHEMA)), "one step per version"


def _columns_needed(version: int) -> dict[str, set[str]]:
    """The columns a store of ``version`` must have before its migrations run."""
    needed = {t.name: {c.name for c in t.columns} for t in DATA_TABLES}
    needed.update({t.name: {c.name for c in t.columns} for t in (analyses_table,)
                   if version >= ADDED_TABLES[t.name]})
    for step in MIGRATIONS:
        if step.source >= version:
            for table, added in dict(step.adds).items():
                needed[table] -= set(added)
    return needed


def server_url(url: str) -> str:
    """The SQLAlchemy URL to connect with: a bare ``postgresql://`` (or ``postgres://``) names
    psycopg 3, the driver brainbench depends on (SQLAlchemy's default for it is psycopg2)."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme):]
    return url


def shown_url(url: str) -> str:
    """The URL for messages: a server URL's password is masked (a file URL is as given)."""
    if url.startswith("sqlite"):
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL: SQLAlchemy's own error names it
        return url


def default_url(results_dir: Path) -> str:
    return f"sqlite:///{Path(results_dir).resolve() / 'results.db'}"


def _sqlite_file(engine: Engine) -> bool:
    return engine.url.database not in (None, "", ":memory:") and \
        not str(engine.url.database).startswith("file::memory:")


def _sqlite_transactions(engine: Engine) -> None:
    """pysqlite runs DDL outside any transaction; let SQLAlchemy's BEGIN/COMMIT govern it, so
    an interrupted migration rolls back whole (SQLAlchemy's documented recipe).

    A file store gets a busy timeout, so a writer waits for another process's lock instead of
    failing at once, and (`_sqlite_wal`) WAL journal mode, so runs read while one writes."""
    wal = _sqlite_file(engine)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None
        if wal:
            import sqlite3

            try:
                dbapi_connection.execute(f"PRAGMA busy_timeout = {int(SQLITE_TIMEOUT_S * 1000)}")
            except sqlite3.Error:  # not a database: the first query says so
                pass

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN")


def _sqlite_wal(engine: Engine) -> None:
    """Switch a file store to WAL (persistent in the file), once its schema is known good: a
    store refused or left unmigrated keeps its bytes."""
    if not _sqlite_file(engine):
        return
    import sqlite3

    try:  # outside any transaction (SQLAlchemy's connections BEGIN first)
        raw = engine.raw_connection()
        try:
            raw.driver_connection.execute("PRAGMA journal_mode = WAL")
        finally:
            raw.close()
    except (SQLAlchemyError, sqlite3.Error):  # read-only or busy: the rollback journal works
        pass


def _number(value: Any) -> float | None:
    """A metric value for the store: undefined (None or NaN) is NULL."""
    if value is None:
        return None
    value = float(value)
    return None if value != value else value


def _cell_rows(cell: Cell, metrics: Mapping[str, Any], predictions: Iterable[Prediction],
               created_at: str, persons: Mapping[str, str] | None = None
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The result rows and prediction rows of one cell (shared by every writer)."""
    cell_id = cell.cell_id
    base = asdict(cell)
    base["hyperparameters"] = json.dumps(cell.hyperparameters, sort_keys=True, default=str)
    base["split"] = cell.split or None  # NULL: the standard split, as in every older store
    rows = [dict(base, cell_id=cell_id, metric=name, value=_number(value),
                 created_at=created_at) for name, value in metrics.items()]
    if not rows:
        raise BenchError(f"cell {cell_id[:12]} ({cell.backbone}, {cell.task}, fraction "
                         f"{cell.fraction:g}, seed {cell.seed}): no metrics to store")
    persons = persons or {}
    preds = [{"cell_id": cell_id, "sample_id": sample_id,
              "target": json.dumps(target, default=str),
              "prediction": json.dumps(prediction, default=float),
              "person": persons.get(sample_id)}
             for sample_id, target, prediction in predictions]
    return rows, preds


def _reason(exc: Exception) -> str:
    """The database's own message, without SQLAlchemy's statement dump."""
    return str(getattr(exc, "orig", None) or exc).strip()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


#: the engine of every store opened in this process and not yet collected (an engine can
#: outlive its store in a reference cycle, its connections open until a garbage collection):
#: `brainbench.cli.main` closes the ones its command opened (`close_stores`)
_OPEN_ENGINES: "weakref.WeakSet[Engine]" = weakref.WeakSet()


def open_store_engines() -> set[Engine]:
    """The engines of the stores open now (to pass to `close_stores` as `keep`)."""
    return set(_OPEN_ENGINES)


def close_stores(keep: set[Engine] = frozenset()) -> None:  # type: ignore[assignment]
    """Close the pooled connections of every store opened but those of `keep`: a command run
    in-process (a test, a notebook) must not leave connections that some later garbage
    collection closes, since SQLite folds its write-ahead log into the database file when
    the last connection closes, rewriting the file's bytes at an unpredictable moment."""
    for engine in open_store_engines() - set(keep):
        engine.dispose()


class ResultStore:
    def __init__(self, url: str, create: bool = True) -> None:
        """create=False: for the commands that only read a store. A missing SQLite file, an
        empty database or one of another program is then an error, never made a store (the
        schema used to be written into a mistyped path or a foreign file)."""
        self.create = create
        self.read_only = False
        self.shown = shown_url(server_url(url))  # for messages: no password
        if url.startswith("sqlite:///"):
            path = Path(url.removeprefix("sqlite:///"))
            if not create and not path.is_file():
                raise BenchError(f"no results store at {path} (the file does not exist); pass "
                                 "the folder holding results.db (--results DIR) or the URL of "
                                 "an existing store (--db URL)")
            if not create and not (os.access(path.parent, os.W_OK) and os.access(path, os.W_OK)):
                # an archived store on a read-only file system: SQLite opens a WAL store there
                # only as immutable (no -shm file to write), which a reader is
                url, self.read_only = f"sqlite:///file:{path}?mode=ro&immutable=1&uri=true", True
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
        url = server_url(url)
        self.url = url
        try:
            sqlite = url.startswith("sqlite")
            # a server: connections idle in the pool through a long embedding step may have
            # been closed by the server, so each checkout is pinged first
            self.engine: Engine = create_engine(
                url, future=True, **({"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
                                     if sqlite else {"pool_pre_ping": True}))
        except Exception as exc:
            raise BenchError(f"cannot open results store {self.shown}: {exc}") from None
        if self.engine.dialect.name == "sqlite":
            _sqlite_transactions(self.engine)
        self.schema_version = self._open()
        if self.engine.dialect.name == "sqlite" and not self.read_only:
            _sqlite_wal(self.engine)
        _OPEN_ENGINES.add(self.engine)

    def close(self) -> None:
        """Close the pooled connections; the store stays usable (it reconnects on demand)."""
        self.engine.dispose()

    # ------------------------------------------------------------------ schema

    def _state(self, conn: Connection) -> tuple[int | None, set[str]]:
        """(schema version or None for an empty database, the table names)."""
        tables = set(inspect(conn).get_table_names())
        if schema_table.name in tables:
            try:
                versions = conn.execute(select(schema_table.c.version)
                                        .where(schema_table.c.name == SCHEMA_ROW)).scalars().all()
            except SQLAlchemyError as exc:
                raise BenchError(f"results store {self.shown}: table {schema_table.name} is not "
                                 f"readable ({type(exc).__name__}); use a new results folder "
                                 "(--results DIR or --db URL)") from None
            if len(versions) != 1 or not isinstance(versions[0], int):
                raise BenchError(f"results store {self.shown}: table {schema_table.name} holds "
                                 f"{versions!r} instead of one version row {SCHEMA_ROW!r}; the "
                                 "store was damaged: use a new results folder (--results DIR "
                                 "or --db URL)")
            return versions[0], tables
        if tables & {t.name for t in DATA_TABLES}:
            return 1, tables  # the first release wrote no version table
        return None, tables

    def _check(self, conn: Connection, version: int, tables: set[str]) -> None:
        if version > STORE_SCHEMA:
            raise BenchError(
                f"results store {self.shown} has store schema version {version}, but this "
                f"brainbench reads versions 1 to {STORE_SCHEMA}: it was written by a newer "
                "brainbench. Upgrade brainbench to use it, or use a new results folder "
                "(--results DIR or --db URL); the store was not changed")
        if version < 1:
            raise BenchError(f"results store {self.shown}: invalid store schema version "
                             f"{version}; use a new results folder (--results DIR or --db URL)")
        inspector = inspect(conn)
        for table, needed in _columns_needed(version).items():
            if table not in tables:
                raise BenchError(f"results store {self.shown} (store schema {version}) has no "
                                 f"table {table!r}; it is not a complete brainbench results "
                                 "store: use a new results folder (--results DIR or --db URL)")
            have = {c["name"] for c in inspector.get_columns(table)}
            missing = sorted(needed - have)
            if missing:
                raise BenchError(
                    f"results store {self.shown}: table {table!r} lacks column(s) "
                    f"{', '.join(missing)} that store schema {version} has; it was not written "
                    "by brainbench or was altered: use a new results folder (--results DIR or "
                    "--db URL); the store was not changed")

    def _migrate(self, conn: Connection) -> int:
        version, tables = self._state(conn)
        if version is None and not self.create:
            held = (f"only tables of another program ({', '.join(sorted(tables)[:5])})"
                    if tables else "no tables (an empty database)")
            raise BenchError(f"results store {self.shown} holds {held}, no brainbench results; "
                             "a command that only reads results does not create a store there "
                             "(run `make bench` to make one, or pass the right --results DIR "
                             "or --db URL); the database was not changed")
        if self.read_only:
            raise BenchError(f"results store {self.shown} is in a read-only folder and needs "
                             f"migrating to store schema {STORE_SCHEMA} before it can be read; "
                             "copy its folder somewhere writable and pass that (--results DIR)")
        if version is None:
            metadata.create_all(conn)
            conn.execute(schema_table.insert().values(name=SCHEMA_ROW, version=STORE_SCHEMA))
            return STORE_SCHEMA
        self._check(conn, version, tables)
        if version == STORE_SCHEMA:
            return version
        if schema_table.name not in tables:
            schema_table.create(conn)
            conn.execute(schema_table.insert().values(name=SCHEMA_ROW, version=version))
        for step in MIGRATIONS[version - 1:]:
            step.apply(conn, self.shown)
        conn.execute(schema_table.update().where(schema_table.c.name == SCHEMA_ROW)
                     .values(version=STORE_SCHEMA))
        return STORE_SCHEMA

    def _open(self) -> int:
        """Check the schema, migrating (or creating) in one transaction when needed."""
        try:
            with self.engine.connect() as conn:  # the common case writes nothing
                version, tables = self._state(conn)
                if version is not None:
                    self._check(conn, version, tables)
                    if version == STORE_SCHEMA:
                        return version
        except SQLAlchemyError as exc:
            raise BenchError(f"cannot open results store {self.shown}: {_reason(exc)}") from None
        for attempt in range(1, _OPEN_ATTEMPTS + 1):
            try:
                with self.engine.begin() as conn:
                    return self._migrate(conn)
            except SQLAlchemyError as exc:
                # another process creating or migrating the same store at once: after it
                # committed, the next attempt finds the store current
                racing = isinstance(exc, (OperationalError, IntegrityError, ProgrammingError))
                if not racing or attempt == _OPEN_ATTEMPTS:
                    raise BenchError(f"cannot open results store {self.shown}: migrating it to "
                                     f"store schema {STORE_SCHEMA} failed ({_reason(exc)}); "
                                     "the store was not changed") from None
                time.sleep(0.2 * attempt)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ writes

    def write_cell(self, cell: Cell, metrics: Mapping[str, float | None],
                   predictions: Iterable[Prediction],
                   persons: Mapping[str, str] | None = None) -> None:
        """Replace the cell's rows and predictions atomically (timestamped now)."""
        self.write_cells([StoredCell(cell, metrics, list(predictions), persons=persons)])

    def write_cells(self, cells: Iterable[StoredCell]) -> None:
        """Replace each cell's rows and predictions, all cells in ONE transaction: a failure
        writes none of them. Each keeps its ``created_at`` (None: now)."""
        now = _now()
        batches = [(item.cell.cell_id, *_cell_rows(item.cell, item.metrics, item.predictions,
                                                   item.created_at or now, item.persons))
                   for item in cells]
        try:
            self._retry_locked(lambda: self._write(batches), batches)
        except IntegrityError as exc:
            ids = ", ".join(cell_id[:12] for cell_id, *_ in batches[:3])
            if cell_metric_index.name in str(exc) or "unique" in str(exc).lower():
                raise BenchError(f"results store {self.shown}: cell(s) {ids} were being written "
                                 "by another run at the same moment; that run's rows are kept "
                                 "and nothing of this write was stored") from None
            raise BenchError(f"results store {self.shown}: writing cell(s) {ids} failed "
                             f"({_reason(exc)}); nothing of this write was stored") from None

    def _write(self, batches) -> None:
        with self.engine.begin() as conn:
            for cell_id, rows, preds in batches:
                conn.execute(delete(results_table).where(results_table.c.cell_id == cell_id))
                conn.execute(delete(predictions_table)
                             .where(predictions_table.c.cell_id == cell_id))
                conn.execute(results_table.insert(), rows)
                if preds:
                    conn.execute(predictions_table.insert(), preds)

    def _retry_locked(self, write: Callable[[], None], batches) -> None:
        """Run one write transaction; one that finds the store locked by another process
        (after the busy timeout) is rolled back and retried with backoff, then refused."""
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            try:
                return write()
            except OperationalError as exc:
                reason = _reason(exc)
                # SQLite: locked / busy; PostgreSQL: a deadlock or serialization failure,
                # which the server resolves by aborting one transaction (retrying it is safe)
                locked = any(word in reason.lower() for word in
                             ("locked", "busy", "deadlock detected", "could not serialize"))
                ids = ", ".join(cell_id[:12] for cell_id, *_ in batches[:3])
                if not locked:
                    raise BenchError(f"results store {self.shown}: writing cell(s) {ids} failed "
                                     f"({reason}); nothing of this write was stored") from None
                if attempt == _WRITE_ATTEMPTS:
                    raise BenchError(
                        f"results store {self.shown} stayed locked by another process through "
                        f"{_WRITE_ATTEMPTS} attempts of {SQLITE_TIMEOUT_S:g} s; cell(s) {ids} "
                        "were not stored (nothing half-written): rerun to store them") from None
                time.sleep(_WRITE_BACKOFF_S * 2 ** (attempt - 1))

    def write_analyses(self, results: Sequence[AnalysisResult]) -> None:
        """Replace the rows of each (analysis, metric) given, all in ONE transaction. Values
        must be finite or None: anything else is refused before the store is touched."""
        now = _now()
        rows = []
        for r in results:
            for name in ("value", "lower", "upper", "chance"):
                number = getattr(r, name)
                if number is not None and not math.isfinite(float(number)):
                    raise BenchError(f"analysis {r.analysis} of {r.backbone} ({r.metric}): "
                                     f"{name} = {number!r} is not a finite number; nothing "
                                     "was stored")
            row = {f.name: getattr(r, f.name) for f in fields(AnalysisResult)}
            row.update(analysis_id=r.analysis_id, created_at=r.created_at or now,
                       details=json.dumps(dict(r.details), sort_keys=True, default=str),
                       **{n: _number(getattr(r, n)) for n in ("value", "lower", "upper",
                                                             "chance")})
            rows.append(row)
        if not rows:
            return
        t = analyses_table

        def write() -> None:
            with self.engine.begin() as conn:
                for row in rows:
                    conn.execute(delete(t).where(t.c.analysis_id == row["analysis_id"])
                                 .where(t.c.metric == row["metric"]))
                conn.execute(t.insert(), rows)

        self._retry_locked(write, [(row["analysis_id"],) for row in rows])

    def analyses(self, backbones: Sequence[str] | None = None) -> list[AnalysisResult]:
        """Stored analysis rows (optionally of some backbones), in the order written."""
        t = analyses_table
        query = select(t).order_by(t.c.id)
        if backbones:
            query = query.where(t.c.backbone.in_(list(backbones)))
        names = [f.name for f in fields(AnalysisResult)]
        out = []
        with self.engine.connect() as conn:
            for row in conn.execute(query).mappings():
                values = {name: row[name] for name in names}
                try:
                    values["details"] = json.loads(values["details"])
                except (TypeError, json.JSONDecodeError):
                    raise BenchError(f"results store {self.shown}: analysis "
                                     f"{row['analysis_id']}: details are not JSON") from None
                out.append(AnalysisResult(**values))
        return out

    # ------------------------------------------------------------------ reads

    def has_cell(self, cell_id: str) -> bool:
        return self.cell_hyperparameters(cell_id) is not None

    def cell_hyperparameters(self, cell_id: str) -> dict[str, Any] | None:
        """The stored cell's hyperparameters (None: no such cell). An imported cell's hold
        its verification record (brainbench.results_io), which a run looks for."""
        with self.engine.connect() as conn:
            row = conn.execute(select(results_table.c.hyperparameters)
                               .where(results_table.c.cell_id == cell_id).limit(1)).first()
        if row is None:
            return None
        try:
            value = json.loads(row[0])
        except (TypeError, json.JSONDecodeError):
            raise BenchError(f"results store {self.shown}: cell {cell_id}: hyperparameters "
                             f"{row[0]!r} are not JSON") from None
        return value if isinstance(value, dict) else {}

    def _query(self, **filters: Any):
        query = select(results_table)
        for column, wanted in filters.items():
            if wanted is None:
                continue
            if column not in results_table.c:
                raise BenchError(f"results have no column {column!r} to filter on; columns: "
                                 f"{', '.join(results_table.c.keys())}")
            col = results_table.c[column]
            if column == "split" and wanted == "":  # the standard split is stored as NULL
                query = query.where(col.is_(None))
                continue
            query = query.where(col.in_(list(wanted)) if isinstance(wanted, (list, tuple, set))
                                else col == wanted)
        return query

    def frame(self, **filters: Any) -> pd.DataFrame:
        """All result rows (optionally filtered by column == value, or column in list;
        ``split=""`` selects the standard split). ``split`` is "" for standard-split rows."""
        with self.engine.connect() as conn:
            frame = pd.read_sql(self._query(**filters), conn)
        return frame.assign(split=frame["split"].fillna("").astype(str))

    def cells(self, with_predictions: bool = False, **filters: Any) -> list[StoredCell]:
        """The stored cells whose rows match ``filters`` (as `frame`), sorted by cell id, each
        with its metrics (None = undefined) and, if asked, its predictions."""
        names = [f.name for f in fields(Cell)]
        grouped: dict[str, tuple[dict[str, Any], dict[str, float | None]]] = {}
        with self.engine.connect() as conn:
            rows = conn.execute(self._query(**filters).order_by(results_table.c.id)).mappings()
            for row in rows:
                _, metrics = grouped.setdefault(row["cell_id"], (dict(row), {}))
                metrics[row["metric"]] = row["value"]
        preds = self.predictions(grouped) if with_predictions else {}
        persons = self.persons(grouped) if with_predictions else {}
        out = []
        for cell_id in sorted(grouped):
            first, metrics = grouped[cell_id]
            values = {name: first[name] for name in names}
            try:
                values["hyperparameters"] = json.loads(values["hyperparameters"])
            except (TypeError, json.JSONDecodeError):
                raise BenchError(f"results store {self.shown}: cell {cell_id}: hyperparameters "
                                 f"{values['hyperparameters']!r} are not JSON") from None
            values["fraction"], values["seed"] = float(values["fraction"]), int(values["seed"])
            values["precision"] = values["precision"] or "fp32"  # stores before schema 4
            values["split"] = values["split"] or ""  # stores before schema 5
            values["n_train"], values["n_test"] = int(values["n_train"]), int(values["n_test"])
            out.append(StoredCell(Cell(**values), metrics, preds.get(cell_id, []),
                                  first["created_at"], cell_id, persons.get(cell_id)))
        return out

    def predictions(self, cell_ids: Iterable[str]) -> dict[str, list[Prediction]]:
        """{cell id: [(sample id, target, prediction), ...]} with JSON-decoded values, in the
        order they were written; cells without stored predictions are absent."""
        ids = list(dict.fromkeys(cell_ids))
        out: dict[str, list[Prediction]] = {}
        t = predictions_table
        with self.engine.connect() as conn:
            for start in range(0, len(ids), PREDICTIONS_CHUNK):
                chunk = ids[start:start + PREDICTIONS_CHUNK]
                query = (select(t.c.cell_id, t.c.sample_id, t.c.target, t.c.prediction)
                         .where(t.c.cell_id.in_(chunk)).order_by(t.c.id))
                for cell_id, sample_id, target, prediction in conn.execute(query):
                    try:
                        decoded = (sample_id, json.loads(target), json.loads(prediction))
                    except (TypeError, json.JSONDecodeError):
                        raise BenchError(f"results store {self.shown}: cell {cell_id} sample "
                                         f"{sample_id}: stored target/prediction is not JSON "
                                         f"({target!r}, {prediction!r})") from None
                    out.setdefault(cell_id, []).append(decoded)
        return out

    def persons(self, cell_ids: Iterable[str]) -> dict[str, dict[str, str]]:
        """{cell id: {sample id: person}} for the predictions that record their person."""
        ids = list(dict.fromkeys(cell_ids))
        out: dict[str, dict[str, str]] = {}
        t = predictions_table
        with self.engine.connect() as conn:
            for start in range(0, len(ids), PREDICTIONS_CHUNK):
                query = (select(t.c.cell_id, t.c.sample_id, t.c.person)
                         .where(t.c.cell_id.in_(ids[start:start + PREDICTIONS_CHUNK]))
                         .where(t.c.person.is_not(None)))
                for cell_id, sample_id, person in conn.execute(query):
                    out.setdefault(cell_id, {})[sample_id] = person
        return out


def fail_orphaned_trials(storage: Any, study_name: str) -> int:
    """Fail the trials a killed run left RUNNING before their first heartbeat was written.

    Optuna writes a trial's first heartbeat from a thread after the trial row exists, and
    never fails a RUNNING trial that has no heartbeat: a kill in that window would hold a
    slot of the cell's trial budget for good. Such a trial older than the grace period
    belongs to no live run (a live one beats within milliseconds of starting). Optuna stores
    a trial's start in the local time of the host that ran it: hosts sharing a store must
    share a time zone (heartbeats themselves use the database server's clock). Returns how
    many were failed."""
    from datetime import timedelta

    import optuna
    from sqlalchemy import text

    if not isinstance(storage, optuna.storages.RDBStorage) or storage.heartbeat_interval is None:
        return 0
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:  # no such study yet: nothing can be orphaned
        return 0
    grace = storage.grace_period or 2 * storage.heartbeat_interval
    cutoff = datetime.now() - timedelta(seconds=grace)  # optuna's datetime_start: local, naive
    query = text("SELECT t.trial_id FROM trials t LEFT JOIN trial_heartbeats h "
                 "ON h.trial_id = t.trial_id WHERE t.study_id = :study AND "
                 "t.state = 'RUNNING' AND h.trial_id IS NULL AND t.datetime_start < :cutoff")
    with storage.engine.connect() as conn:
        orphans = [row[0] for row in conn.execute(query, {"study": study_id, "cutoff": cutoff})]
    failed = 0
    for trial_id in orphans:
        try:
            failed += bool(storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL))
        except optuna.exceptions.UpdateFinishedTrialError:  # another run failed it first
            pass
    return failed


def optuna_storage(storage_url: str | None) -> Any:
    """Optuna's storage in the results database (its own tables beside ours). SQLite waits
    for another process's lock instead of failing, and trials carry a heartbeat so one left
    RUNNING by a killed run is failed (and no longer counts against the budget) after a
    minute. None: in memory."""
    if storage_url is None:
        return None
    import warnings

    import optuna

    storage_url = server_url(storage_url)
    kwargs = ({"connect_args": {"timeout": 30}} if storage_url.startswith("sqlite")
              else {"pool_pre_ping": True})
    for attempt in range(1, 6):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in optuna 3-5
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(storage_url, engine_kwargs=kwargs,
                                                  heartbeat_interval=10, grace_period=60)
        except (OperationalError, IntegrityError, ProgrammingError) as exc:
            # two runs creating optuna's tables at once: a table that "already exists", or
            # both stamping alembic_version (SQLite: UNIQUE constraint failed; PostgreSQL: a
            # duplicate table, or a duplicate key in its catalog)
            racing = any(word in str(exc).lower() for word in
                         ("already exists", "duplicate", "unique constraint"))
            if not racing or attempt == 5:
                raise BenchError(f"optuna storage {shown_url(storage_url)}: cannot open it "
                                 f"({getattr(exc, 'orig', exc)})") from None
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")
