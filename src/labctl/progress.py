"""Progress for the steps that take a while: pip installs, downloads, readiness waits.

Quiet by default. On a terminal (stderr) a step shows a spinner with its elapsed time and
a download a bar with bytes, rate and ETA; both vanish when done, leaving the one line the
caller prints. Off a terminal nothing is drawn. With ``-v`` (:func:`configure`
``verbose=True``) the tools' own output is passed through, line by line, to stderr.

The command line configures this once (:func:`configure`); library use and tests get the
silent default.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

_state: dict[str, Any] = {"live": False, "console": None, "verbose": False}


def configure(*, live: bool, verbose: bool = False) -> None:
    """``live``: draw spinners and bars on stderr (only if it is a terminal)."""
    _state.update(live=live and sys.stderr.isatty(), console=None, verbose=verbose)


def _console() -> Any:
    """The stderr Console when live, made at the first spinner or bar (rich costs ~20 ms to
    import: a command that draws none does not pay it); None when not live."""
    if _state["console"] is None and _state["live"]:
        from rich.console import Console

        _state["console"] = Console(stderr=True, highlight=False)
    return _state["console"]


def verbose() -> bool:
    return bool(_state["verbose"])


def echo() -> Callable[[str], None] | None:
    """Where a tool's own output goes under ``-v`` (None: captured, shown only on failure)."""
    if not _state["verbose"]:
        return None
    return lambda line: (sys.stderr.write(line if line.endswith("\n") else line + "\n"), sys.stderr.flush())[0]


def elapsed(start: float) -> str:
    """Seconds since ``start`` (a monotonic time) as people read them: 7s, 2m05s."""
    sec = int(time.monotonic() - start)
    return f"{sec // 60}m{sec % 60:02d}s" if sec >= 60 else f"{sec}s"


@contextmanager
def step(label: str) -> Iterator[Callable[[str], None]]:
    """A spinner reading ``label (elapsed)``; yields a function that changes the label's
    detail (the current sub-step)."""
    console = None if _state["verbose"] else _console()
    if console is None:
        yield lambda _detail: None
        return
    start, detail = time.monotonic(), [""]
    status = console.status(label)
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(0.5):
            extra = f": {detail[0]}" if detail[0] else ""
            status.update(f"{label}{extra} ({elapsed(start)})")

    status.start()
    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        yield lambda text: detail.__setitem__(0, text)
    finally:
        stop.set()
        ticker.join()
        status.stop()


@contextmanager
def download(label: str) -> Iterator[Callable[[int, int | None], None]]:
    """A bar for one transfer; yields ``update(done_bytes, total_or_None)``."""
    console = _console()
    if console is None:
        yield lambda _done, _total: None
        return
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TimeRemainingColumn(), console=console, transient=True)
    task = bar.add_task(label, total=None)
    with bar:
        yield lambda done, total: bar.update(task, completed=done, total=total)
