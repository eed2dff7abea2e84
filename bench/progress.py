"""Progress bars for every long stage, on a terminal and in a log file.

tqdm hides a bar when stderr is not a terminal (``disable=None``), so a cluster job's log
showed nothing during hours of encoding at the paper profile. Here a bar redraws in place on
a terminal, as before; off one (a batch job's log, ``2> run.log``) it writes a plain line once
the stage has run ``LOG_DELAY_S`` seconds, then at most every ``LOG_INTERVAL_S`` seconds (tqdm
also waits that long for its first line), and when it ends. Stages shorter than that leave a
log (and a captured stderr) untouched.
"""

from __future__ import annotations

import re
import sys
from typing import Any, Iterable, TextIO

from tqdm.auto import tqdm

LOG_INTERVAL_S = 30.0
LOG_DELAY_S = 30.0
_CURSOR_MOVES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # nested bars move the cursor


class _LogLines:
    """A text stream for tqdm that turns its carriage-return redraws into lines."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        for piece in re.split(r"[\r\n]", _CURSOR_MOVES.sub("", text)):
            if piece.strip():  # a redraw, not the blanks tqdm writes to clear a line
                self.stream.write(piece.rstrip() + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False


def progress_bar(iterable: Iterable[Any] | None = None, *, desc: str, unit: str,
                 total: int | None = None, enabled: bool = True, delay: float = 0.0,
                 log_delay: float | None = None, leave: bool = False,
                 stream: TextIO | None = None) -> Any:
    """A tqdm bar over `iterable` (or updated by hand with `total`). `delay`: seconds before
    it shows on a terminal; `log_delay`: in a log (default LOG_DELAY_S). `enabled` False or
    nothing to count: no output at all."""
    stream = stream if stream is not None else sys.stderr
    count = total if total is not None else (len(iterable) if hasattr(iterable, "__len__")
                                             else None)
    if not enabled or count == 0:
        return tqdm(iterable, total=total, disable=True)
    if getattr(stream, "isatty", lambda: False)():
        return tqdm(iterable, total=total, desc=desc, unit=unit, delay=delay, leave=leave,
                    file=stream)
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=_LogLines(stream),
                delay=LOG_DELAY_S if log_delay is None else log_delay, leave=True, ascii=True,
                mininterval=LOG_INTERVAL_S, maxinterval=LOG_INTERVAL_S)
