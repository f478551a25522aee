"""A terminal for a program that needs one (``labctl top``): a private tmux server (its own
socket, no configuration read) with one pane of a fixed size running a command, read back
with ``capture-pane`` and driven with ``send-keys``. The pane stays after its command ends
(``remain-on-exit``), so its last screen and exit status can be read.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence

from harness.tools import missing


class Pane:
    def __init__(self, name: str, argv: Sequence[str], *, width: int = 80, height: int = 24) -> None:
        tmux = shutil.which("tmux")
        if tmux is None:
            missing("tmux", "apt-get install tmux (scripts/bootstrap.sh does)")
        self.tmux, self.socket, self.width, self.height = tmux, name, width, height
        self.started = time.monotonic()
        self._tmux("-f", "/dev/null", "new-session", "-d", "-s", "main", "-x", str(width), "-y", str(height),
                   shlex.join(argv))
        self._tmux("set-option", "-t", "main", "remain-on-exit", "on")

    def _tmux(self, *args: str) -> str:
        return subprocess.run([self.tmux, "-L", self.socket, *args], check=True, capture_output=True, text=True,
                              timeout=30).stdout

    def lines(self) -> list[str]:
        """The screen now, one string per row (trailing blanks removed)."""
        return self._tmux("capture-pane", "-p", "-t", "main").split("\n")[:self.height]

    def wrapped(self) -> bool:
        """Whether any row of the screen now ran past the right edge into the next: ``-J``
        joins such rows, so one capture then has fewer rows than the pane."""
        return len(self._tmux("capture-pane", "-p", "-J", "-t", "main").split("\n")[:-1]) != self.height

    def send(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "main", *keys)

    def value(self, variable: str) -> str:
        """A tmux format variable of the pane: ``alternate_on``, ``pane_dead_status``..."""
        return self._tmux("display-message", "-p", "-t", "main", f"#{{{variable}}}").strip()

    def wait(self, accept: Callable[[list[str]], bool], timeout: float, interval: float = 0.2) -> list[str] | None:
        """The first screen ``accept`` takes within ``timeout`` seconds, or None."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.lines()
            if accept(screen):
                return screen
            if time.monotonic() >= deadline:
                return None
            time.sleep(interval)

    def close(self) -> None:
        subprocess.run([self.tmux, "-L", self.socket, "kill-server"], capture_output=True, timeout=30)
