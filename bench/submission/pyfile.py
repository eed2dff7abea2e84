"""A backbone written as one Python file: a class implementing `brainbench.backbone.Backbone`.

The file is imported from its path (it does not need to be installed). brainbench uses the
object named ``BACKBONE`` (a Backbone subclass or a factory returning a Backbone) or else the
single Backbone subclass the file defines. It is called with the keyword arguments it accepts
among ``weights`` (the --weights path or None), ``require_weights``, ``image_size`` and
``num_slices`` (profile overrides for 2d backbones).

A module-level ``PARITY`` dict names a reference output made by the author's own code (the
fields of a card's ``[parity]`` table, paths relative to the file); `brainbench validate`
compares the backbone with it (SUBMITTING.md, "Parity with your own upstream code"). A
module-level ``PRETRAINING_DATASETS`` list declares what the weights were trained on; it is
read from the source (`read_pretraining`), as the leaderboard reads it from a bundle.

The file's sha256 is added to the backbone's architecture, so editing the file changes the
feature-cache key and the result cells: old features are never reused for new code.

A "pretrained" claim is re-checked when the backbone is built (`check_pretrained_file`: the
source must be the weights file and hash to the claimed sha256), so `run` never stores an
unverifiable pretrained row.

The author's code is user input: an exception (or ``sys.exit``) while importing the file,
building the backbone or calling any of its methods becomes one `BenchError` naming the file,
the method and the original exception (`call_user`), so `run`, `submit` and `analyze` stop
with exit code 2 and a message, never a traceback; KeyboardInterrupt is never caught. The
backbone's ``name`` must match `brainbench.submission.source.NAME_RE`, as `validate` demands.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from brainbench.backbone import BACKBONES, Backbone, InputContract, WeightsInfo
from brainbench.errors import BenchError
from brainbench.submission.source import NAME_RE
from brainbench.weights import check_pretrained_file

FACTORY_ARGS = ("weights", "require_weights", "image_size", "num_slices")
#: the module-level list of the datasets the weights were pretrained on (README, contamination)
DECLARATION = "PRETRAINING_DATASETS"

#: what user code may raise that becomes a BenchError: any Exception and ``sys.exit`` (whose
#: SystemExit would otherwise end the process with the author's exit code and no message);
#: KeyboardInterrupt (and GeneratorExit) pass through untouched
USER_FAILURES = (Exception, SystemExit)


def _described(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit (sys.exit({exc.code!r}))"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def call_user(where: str, what: str, call: Callable[[], Any],
              passes: tuple[type[BaseException], ...] = ()) -> Any:
    """``call()``, which runs the author's code, with its failures as one BenchError:
    "<where>: <what> raised <type>: <message>". A BenchError the author's code raises (e.g.
    from `brainbench.weights.load_state_strict`) already says what is wrong and passes
    through unchanged, as do the exception types in `passes`."""
    try:
        return call()
    except (BenchError, *passes):
        raise
    except USER_FAILURES as exc:
        raise BenchError(f"{where}: {what} raised {_described(exc)}") from exc


def import_file(path: Path) -> Any:
    """Import a Python file as a uniquely named module (its sha256 is part of the name)."""
    source = path.read_bytes()
    module_name = f"brainbench_submission_{path.stem}_{hashlib.sha256(source).hexdigest()[:12]}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise BenchError(f"backbone file {path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:  # never keep a half-imported module
        del sys.modules[module_name]
        if isinstance(exc, USER_FAILURES) and not isinstance(exc, BenchError):
            raise BenchError(f"backbone file {path} failed to import: "
                             f"{_described(exc)}") from exc
        raise
    return module


def find_entry(module: Any, path: Path) -> Any:
    """``BACKBONE`` if defined, else the one Backbone subclass defined in the file."""
    if hasattr(module, "BACKBONE"):
        return module.BACKBONE
    found = [obj for obj in vars(module).values()
             if inspect.isclass(obj) and issubclass(obj, Backbone) and obj is not Backbone
             and obj.__module__ == module.__name__ and not inspect.isabstract(obj)]
    if len(found) != 1:
        names = ", ".join(c.__name__ for c in found) or "none"
        raise BenchError(f"backbone file {path} defines {len(found)} concrete Backbone "
                         f"subclasses ({names}); define exactly one, or set BACKBONE = <class "
                         "or factory> to choose")
    return found[0]


def call_factory(entry: Any, where: str, **kwargs: Any) -> Backbone:
    """Call a factory or class with the factory arguments it accepts; check the result."""
    if not callable(entry):
        raise BenchError(f"{where}: BACKBONE must be a Backbone subclass or a factory, got "
                         f"{type(entry).__name__}")
    try:
        params = inspect.signature(entry).parameters
    except (TypeError, ValueError):
        params = {}
    takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    chosen = {k: v for k, v in kwargs.items() if takes_all or k in params}
    if kwargs.get("weights") is not None and "weights" not in chosen:
        raise BenchError(f"{where}: --weights was given but {getattr(entry, '__name__', entry)} "
                         "takes no 'weights' argument")
    label = getattr(entry, "__name__", None) or type(entry).__name__
    backbone = call_user(where, f"{label}(...) (building the backbone)",
                         lambda: entry(**chosen))
    if not isinstance(backbone, Backbone):
        raise BenchError(f"{where}: {getattr(entry, '__name__', entry)}(...) returned "
                         f"{type(backbone).__name__}, not a brainbench.backbone.Backbone")
    return backbone


class PyFileBackbone(Backbone):
    """The author's backbone, with the file's sha256 added to its architecture."""

    def __init__(self, inner: Backbone, path: Path, sha256: str) -> None:
        for field, kind in (("contract", InputContract), ("weights", WeightsInfo)):
            value = getattr(inner, field, None)
            if not isinstance(value, kind):
                raise BenchError(f"backbone file {path}: the backbone's `{field}` must be a "
                                 f"brainbench.backbone.{kind.__name__}, got "
                                 f"{type(value).__name__}")
        if inner.weights.status == "pretrained":  # stored and shown as such: re-check it here
            try:
                check_pretrained_file(inner.weights.source, inner.weights.sha256)
            except BenchError as exc:
                raise BenchError(f"backbone file {path}: {exc}") from None
        self.inner = inner
        self.path = path
        self.source_sha256 = sha256
        self.name = inner.name
        self.contract = inner.contract
        self.weights = inner.weights
        self.pretraining_datasets = read_pretraining(path)
        own = getattr(inner, "pretraining_datasets", None)
        if own is not None and (self.pretraining_datasets is None
                                or tuple(own) != self.pretraining_datasets):
            raise BenchError(f"backbone file {path}: the backbone's pretraining_datasets "
                             f"{own!r} is not the file's module-level {DECLARATION} "
                             f"({self.pretraining_datasets!r}); declare it there, once: the "
                             "leaderboard reads it from the source")

    def _call(self, method: str, *args: Any,
              passes: tuple[type[BaseException], ...] = ()) -> Any:
        """The author's ``method(*args)``: the one guard around every call into the file's
        object; its failures become a BenchError naming the file and the method."""
        return call_user(self.where, f"{method}()",
                         lambda: getattr(self.inner, method)(*args), passes)

    @property
    def where(self) -> str:
        """How messages name this backbone: by its file."""
        return f"backbone file {self.path}"

    def embed(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._call("embed", batch)

    @property
    def precisions(self) -> tuple[str, ...]:  # type: ignore[override]
        """What the author's class declares (default fp32 only)."""
        return tuple(getattr(self.inner, "precisions", ("fp32",)))

    def set_precision(self, precision: str) -> None:
        """Resolve as every backbone does, and hand the result to the author's object, whose
        `embed` reads ``self.precision`` (SUBMITTING.md)."""
        super().set_precision(precision)
        setter = getattr(self.inner, "set_precision", None)
        if callable(setter):
            self._call("set_precision", self.precision)
        else:
            self.inner.precision = self.precision

    @property
    def device(self) -> Any:
        """The author's backbone's device where it says, else the CPU (where it was built)."""
        return getattr(self.inner, "device", None) or "cpu"

    def to(self, device: str | torch.device) -> "PyFileBackbone":
        """`DEVICE=cuda` (brainbench.device): the author's backbone moves if it can."""
        if callable(getattr(self.inner, "to", None)):
            self._call("to", device)
        else:
            warnings.warn(f"backbone {self.name!r} (file {self.path.name}) has no .to(device) "
                          f"method: it runs where its own code puts it, not necessarily on "
                          f"{device}", stacklevel=2)
        return self

    def architecture(self) -> dict[str, Any]:
        architecture = self._call("architecture")
        if not isinstance(architecture, dict):
            raise BenchError(f"backbone file {self.path}: architecture() returned "
                             f"{type(architecture).__name__}, expected a dict of the settings "
                             "that change features")
        return {**architecture, "source_file": self.path.name,
                "source_sha256": self.source_sha256}

    def parameter_count(self) -> int:
        return self._call("parameter_count")

    def num_patch_layers(self) -> int:
        # NotImplementedError is the Backbone default's "no patch tokens", which callers ask
        return self._call("num_patch_layers", passes=(NotImplementedError,))

    def patch_tokens(self, batch: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
        return self._call("patch_tokens", batch, layers)


def pyfile_backbone(path: str | Path, **kwargs: Any) -> PyFileBackbone:
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise BenchError(f"backbone file {path} does not exist")
    module = import_file(path)
    inner = call_factory(find_entry(module, path), f"backbone file {path}", **kwargs)
    if not isinstance(getattr(inner, "name", None), str):
        raise BenchError(f"backbone file {path}: the backbone has no string `name` attribute")
    if not NAME_RE.match(inner.name):
        raise BenchError(f"backbone file {path}: name {inner.name!r} must be 1-64 letters, "
                         "digits, '_', '.' or '-', starting with a letter or digit (it names "
                         "result rows and a folder of the submission)")
    if inner.name in BACKBONES:
        raise BenchError(f"backbone file {path}: name {inner.name!r} is a built-in backbone; "
                         "choose another name so results never mix with the reference rows")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return PyFileBackbone(inner, path, sha)


def read_parity(path: str | Path):
    """The file's ``PARITY`` dict as a `brainbench.submission.card.Parity`, or None."""
    from brainbench.submission.card import parse_parity

    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise BenchError(f"backbone file {path} does not exist")
    module = import_file(path)
    if not hasattr(module, "PARITY"):
        return None
    return parse_parity(module.PARITY, path.parent, f"backbone file {path}",
                        spelling="PARITY[{!r}]", table_name="PARITY")


def read_pretraining(path: str | Path) -> tuple[str, ...] | None:
    """The file's module-level ``PRETRAINING_DATASETS`` as the leaderboard reads it (from the
    source, never running it: `brainbench.analyses.contamination`, which `import-bundle` also
    relies on): the dataset names, or None when not declared. A declaration the leaderboard
    would misread (annotated, not a literal) or refuse is a BenchError naming the file, so it
    is caught before a bundle of it can block every table."""
    import ast

    from brainbench.analyses.contamination import check_pretraining_datasets

    path = Path(path)
    where = f"backbone file {path}: {DECLARATION}"
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError) as exc:
        raise BenchError(f"backbone file {path} cannot be read as Python source: {exc}") from None
    for node in tree.body:
        targets = (node.targets if isinstance(node, ast.Assign) else
                   [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else [])
        if not any(isinstance(t, ast.Name) and t.id == DECLARATION for t in targets):
            continue
        if not isinstance(node, ast.Assign):
            raise BenchError(f"{where} must be a plain assignment ({DECLARATION} = [...]): "
                             "the leaderboard reads only that form")
        try:
            value = ast.literal_eval(node.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise BenchError(f"{where} = {ast.unparse(node.value)} is not a literal; write the "
                             "list itself (e.g. [\"IXI\"], [] for none, or \"unknown\"): it is "
                             "read from the source without running the file") from None
        return check_pretraining_datasets(value, where)
    return None
