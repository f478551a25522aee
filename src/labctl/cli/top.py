"""`labctl top`: the live view. Sampling and figures are labctl.ops.top's, the layout
labctl.cli.topview's; this module reads keys, asks before it acts, and paints.

The screen is rich's Live on the terminal's alternate screen; keys are read from the
terminal in cbreak mode. ``q``, Ctrl-C, SIGTERM and SIGHUP leave it the same way: the
alternate screen and the terminal's mode restored, exit status 0. Restart and model switch
run labctl's own operations (labctl.ops.apply.restart, labctl.ops.switch.switch) in a
thread, each after a y/N question, their progress on the message line.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import typer

from labctl.cli import InventoryOpt, _load, app, out, print_lines
from labctl.errors import LabctlError, UsageError

if TYPE_CHECKING:
    from labctl.ops.top import Frame, Sampler

KEYS = "up/down select  r restart  m switch model  l journal  q quit"


@app.command()
def top(
    inventory: InventoryOpt = None,
    interval: Annotated[float, typer.Option("--interval", "-n", min=0.5, max=60.0,
                                            help="Seconds between samples.")] = 1.0,
    once: Annotated[bool, typer.Option("--once", help="Print one frame (two samples INTERVAL apart) and exit: "
                                                     "no terminal needed.")] = False,
) -> None:
    """A live view of this host's services: state, requests and tokens per second, time to
    first token, restarts, memory; per gateway route, the share fallbacks answer.

    Keys: up/down (or k/j) select a service; r restart it, m switch the model it loads
    (current.gguf), l its journal; each change asks first. q quits."""
    from labctl.host.systemd import UserManager
    from labctl.ops import top as ops_top

    loaded = _load(inventory)
    manager = UserManager()
    sampler = ops_top.Sampler(ops_top.plan(loaded.inventory, manager.env), manager=manager,
                              timeout=min(2.0, interval))
    try:
        if once:
            sampler.sample()
            time.sleep(interval)
            sampler.sample()
            frame = ops_top.frame(sampler.targets, list(sampler.history))
            from labctl.cli.topview import screen

            print_lines([text for text, _ in screen(frame, width=out.width, height=1 << 16, title=_title(loaded, interval),
                                                    selected=None, message=[], keys="")])
            return
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            raise UsageError("labctl top needs a terminal (stdin and stdout); --once prints one frame without one")
        Screen(loaded, sampler, interval).run()
    finally:
        sampler.close()


def _title(loaded: Any, interval: float) -> str:
    import socket

    return (f"labctl top  {loaded.inventory.host.user}@{socket.gethostname()}  {time.strftime('%H:%M:%S')}  "
            f"every {interval:g}s")


@dataclass
class Mode:
    """What the keys do now: ``normal``; ``confirm`` (y runs ``action``); ``pick`` (a model
    from ``choices``); ``journal`` (any key closes it)."""

    name: str = "normal"
    question: str = ""
    action: Any = None
    choices: list[str] = field(default_factory=list)
    choice: int = 0
    lines: list[str] = field(default_factory=list)
    title: str = ""


class Screen:
    def __init__(self, loaded: Any, sampler: Sampler, interval: float) -> None:
        self.loaded, self.sampler, self.interval = loaded, sampler, interval
        self.frame: Frame | None = None
        self.version = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.selected = 0
        self.mode = Mode()
        self.message: list[str] = []
        self.busy: str | None = None     # the action running, by name

    # --- sampling, in its own thread: a hung backend costs it a timeout, never the keys ---

    def sample_loop(self) -> None:
        from labctl.ops.top import frame

        while not self.stop.is_set():
            started = time.monotonic()
            try:
                self.sampler.sample()
                made = frame(self.sampler.targets, list(self.sampler.history))
            except LabctlError as exc:
                self.say(exc.lines()[0])
            else:
                with self.lock:
                    self.frame = made
                    self.version += 1
            self.stop.wait(max(self.interval - (time.monotonic() - started), 0.05))

    def say(self, text: str) -> None:
        with self.lock:
            self.message = [text]
            self.version += 1

    # --- the terminal -------------------------------------------------------------------

    def run(self) -> None:
        import select
        import termios
        import tty

        from rich.console import Console, Group
        from rich.live import Live
        from rich.text import Text

        from labctl.cli.topview import screen

        def quit_(signum: int, _frame: object) -> None:
            self.stop.set()

        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, quit_)
        console = Console(highlight=False)
        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
        sampler = threading.Thread(target=self.sample_loop, daemon=True)
        sampler.start()
        try:
            tty.setcbreak(fd)
            with Live(console=console, screen=True, auto_refresh=False, transient=True) as live:
                shown = (-1, (0, 0))
                while not self.stop.is_set():
                    size = (console.size.width, console.size.height)
                    if (self.version, size) != shown:
                        with self.lock:
                            shown = (self.version, size)
                            lines = self.lines(screen, size)
                        live.update(Group(*(Text(t, style=s, no_wrap=True, overflow="crop") for t, s in lines)),
                                    refresh=True)
                    try:
                        ready = select.select([fd], [], [], 0.1)[0]
                    except InterruptedError:
                        continue
                    if ready:
                        data = os.read(fd, 64)
                        if not data:
                            break  # the terminal went away
                        for key in keys_of(data):
                            self.key(key)
        finally:
            self.stop.set()
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)

    def lines(self, screen: Any, size: tuple[int, int]) -> list[tuple[str, str]]:
        from labctl.ops.top import Frame

        frame = self.frame or Frame([], [], ["sampling..."])
        width, height = size
        title = _title(self.loaded, self.interval)
        if frame.window:
            title += f"  rates over {frame.window:.0f}s"
        mode = self.mode
        message = list(self.message)
        if mode.name == "confirm":
            message = [mode.question + " (y/N)"]
        if mode.name == "pick":
            overlay = [("> " if i == mode.choice else "  ") + c for i, c in enumerate(mode.choices)]
            return screen(frame, width=width, height=height, title=title, selected=self.selected, message=message,
                          keys="up/down choose  enter switch  esc back", overlay=overlay, overlay_title=mode.title)
        if mode.name == "journal":
            return screen(frame, width=width, height=height, title=title, selected=self.selected, message=message,
                          keys="any key: back", overlay=mode.lines, overlay_title=mode.title)
        return screen(frame, width=width, height=height, title=title, selected=self.selected, message=message,
                      keys=KEYS)

    # --- keys ---------------------------------------------------------------------------

    def key(self, key: str) -> None:
        with self.lock:
            self.version += 1
            mode = self.mode
            if mode.name == "confirm":
                self.mode = Mode()
                if key in ("y", "Y"):
                    mode.action()
                else:
                    self.message = ["cancelled"]
                return
            if mode.name == "journal":
                self.mode = Mode()
                return
            if mode.name == "pick":
                if key in ("up", "k"):
                    mode.choice = max(mode.choice - 1, 0)
                elif key in ("down", "j"):
                    mode.choice = min(mode.choice + 1, len(mode.choices) - 1)
                elif key == "enter" and mode.choices:
                    self.ask_switch(mode.choices[mode.choice])
                elif key in ("esc", "q"):
                    self.mode = Mode()
                return
            services = self.frame.services if self.frame else []
            if key in ("up", "k"):
                self.selected = max(self.selected - 1, 0)
            elif key in ("down", "j"):
                self.selected = min(self.selected + 1, max(len(services) - 1, 0))
            elif key == "q":
                if self.busy:
                    self.mode = Mode("confirm", f"{self.busy} is still running; quit anyway?", self.stop.set)
                else:
                    self.stop.set()
            elif key in ("r", "m", "l") and not services:
                self.message = ["no services shown yet: the first sample is still being taken"]
            elif key in ("r", "m", "l"):
                name = services[min(self.selected, len(services) - 1)].name
                {"r": self.ask_restart, "m": self.pick_model, "l": self.journal}[key](name)

    def ask_restart(self, name: str) -> None:
        if self.busy:
            self.message = [f"{self.busy} is running; one change at a time"]
            return
        self.mode = Mode("confirm", f"restart {name} (and wait until it is ready)?",
                         lambda: self.start(f"restart {name}", lambda say: self.restart(name, say)))

    def restart(self, name: str, say: Any) -> str:
        from labctl.ops import apply

        report = apply.restart(self.loaded, [name], say=say, wait_lock=False)
        return f"restart {name}: ready in {report.ready[name]['seconds']}s"

    def pick_model(self, name: str) -> None:
        from labctl.ops.switch import list_models, llama_services

        inv = self.loaded.inventory
        if self.busy:
            self.message = [f"{self.busy} is running; one change at a time"]
            return
        movers = list(llama_services(inv))
        if name not in movers:
            self.message = [f"{name} does not load {os.path.basename(inv.host.current_path)}: model switch moves "
                            "that link, and the services that load it"]
            return
        choices = [e.name for e in list_models(inv) if e.problem is None and not e.current]
        if not choices:
            self.message = ["no other model to switch to (labctl model list)"]
            return
        self.mode = Mode("pick", choices=choices,
                         title=f"switch {os.path.basename(inv.host.current_path)} to (restarts {', '.join(movers)}):")

    def ask_switch(self, model: str) -> None:
        from labctl.ops.switch import llama_services

        movers = ", ".join(llama_services(self.loaded.inventory))
        self.mode = Mode("confirm", f"switch to {model}? {movers} drain and restart one at a time",
                         lambda: self.start(f"switch to {model}", lambda say: self.switch(model, say)))

    def switch(self, model: str, say: Any) -> str:
        from labctl.ops.switch import switch

        result = switch(self.loaded.inventory, model, manager=self.sampler.manager, say=say)
        return f"switched to {os.path.basename(result.target)} ({result.outcome})"

    def journal(self, name: str) -> None:
        from labctl.ops.journal import journal_lines

        try:
            lines = journal_lines(self.loaded.inventory, name, self.sampler.manager, 200)
        except LabctlError as exc:
            self.message = exc.lines()[:1]
            return
        self.mode = Mode("journal", lines=lines, title=f"{name}: its journal (labctl logs {name})")

    def start(self, what: str, work: Any) -> None:
        """Run ``work(say)`` in a thread; its progress and its end on the message line."""
        self.busy = what
        self.message = [f"{what}..."]
        started = time.monotonic()

        def say(text: str) -> None:
            self.say(f"{what} ({time.monotonic() - started:.0f}s): {text}")

        def run() -> None:
            try:
                done = work(say)
            except LabctlError as exc:
                done = f"{what} failed: {' '.join(exc.lines())}"
            except Exception as exc:  # noqa: BLE001 - shown, not a traceback over the screen
                done = f"{what} failed: {type(exc).__name__}: {exc}"
            self.busy = None
            self.say(done)

        threading.Thread(target=run, daemon=True).start()


def keys_of(data: bytes) -> list[str]:
    """Key names in what the terminal sent: arrows' escape sequences, enter, escape, and
    printable characters as themselves."""
    out: list[str] = []
    i = 0
    while i < len(data):
        if data[i:i + 3] in (b"\x1b[A", b"\x1bOA"):
            out.append("up")
            i += 3
        elif data[i:i + 3] in (b"\x1b[B", b"\x1bOB"):
            out.append("down")
            i += 3
        elif data[i:i + 2] == b"\x1b[":  # another sequence: skip to its final byte
            j = i + 2
            while j < len(data) and not 0x40 <= data[j] <= 0x7E:
                j += 1
            i = j + 1
        elif data[i] == 0x1B:
            out.append("esc")
            i += 1
        elif data[i] in (0x0D, 0x0A):
            out.append("enter")
            i += 1
        elif data[i] == 0x03:  # Ctrl-C in cbreak mode arrives as SIGINT; a raw one quits too
            out.append("q")
            i += 1
        else:
            out.append(chr(data[i]) if 0x20 <= data[i] < 0x7F else "")
            i += 1
    return [k for k in out if k]
