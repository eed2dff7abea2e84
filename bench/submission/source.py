"""From what the user names (a card, a Python file, a registered or plugin name) to a backbone."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from brainbench.backbone import Backbone
from brainbench.errors import BenchError

CARD_SUFFIXES = (".toml",)
PY_SUFFIXES = (".py",)
#: a backbone name: it names result rows and a folder under leaderboard/submissions/
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def is_submission_path(text: str | Path) -> bool:
    """A card or Python file path (by suffix), as opposed to a registered backbone name."""
    return str(text).endswith(CARD_SUFFIXES + PY_SUFFIXES)


def submission_kind(path: str | Path) -> str:
    text = str(path)
    if text.endswith(CARD_SUFFIXES):
        return "card"
    if text.endswith(PY_SUFFIXES):
        return "pyfile"
    return "name"  # a registered or entry-point backbone


def backbone_from_path(path: str | Path, **kwargs: Any) -> Backbone:
    """Build the backbone a card or Python file describes (factory keyword arguments as for
    `create_backbone`)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise BenchError(f"BACKBONE={path}: no such file; expected a card (.toml) or a Python "
                         "backbone file (.py), see SUBMITTING.md")
    if submission_kind(path) == "card":
        from brainbench.submission.card import card_backbone, read_card

        return card_backbone(read_card(path), **kwargs)
    from brainbench.submission.pyfile import pyfile_backbone

    return pyfile_backbone(path, **kwargs)


def submission_name(path: str | Path) -> str:
    """The name results will carry, read without building the network when possible."""
    if submission_kind(path) == "card":
        from brainbench.submission.card import read_card

        return read_card(path).name
    return backbone_from_path(path).name
