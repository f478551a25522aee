"""``labctl top`` on the booted CPU demo (tests/harness/stack.py), in a real terminal: a tmux
pane of 80x24 on the host running ``labctl top`` inside the machine as labuser (nsenter,
runuser: sandbox.Machine.enter_command), read back with ``capture-pane`` and driven with
``send-keys``, under steady load through the gateway.

It checks what the issue asks of it: every service shows non-zero rates within 5 s of the
first frame; llama-server SIGKILLed mid-run shows as ``failed`` while systemd restarts it,
then ``serving`` again; every screen fits 80x24 with no word broken; ``q`` and SIGTERM each
quit with the terminal restored (alternate screen left, canonical mode and echo back) and
exit 0. The captured screens are printed (``-s`` shows them).
"""

from __future__ import annotations

import os
import re
import shlex
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest
from harness.stack import HOME, INVENTORY, LABCTL, Stack, gateway_load
from harness.terminal import Pane

from labctl.cli.top import KEYS
from labctl.cli.topview import GATEWAY_MARK, ROUTE_COLUMNS, SERVICE_COLUMNS, STATE_STYLE
from labctl.ops.top import STATE_WORDS

pytestmark = pytest.mark.system

SERVICES = ("native", "bindings", "gateway")
ROUTES = ("native", "bindings")
LEFT = {"SERVICE", "STATE", "MODEL", "ROUTE", "TO", "GATEWAY"}
EXIT = "labctl-top-exit="
# What a value on the screen may be: a number with its unit (and the gateway's mark), a
# share, a size, a time, "-", or "... N more".
VALUE = re.compile(r"(-|\d+(\.\d+)?[kM]?|\d+ms|\d+(\.\d+)?s|\d+%|\d+(\.\d+)?[KMG]|\d+B|\.\.\.)\*?")


def top_argv(stack: Stack) -> list[str]:
    """labctl top inside the machine as labuser, under a shell that says how it ended and
    whether the terminal is back in canonical mode with echo (what a clean exit restores)."""
    script = (f"{shlex.quote(LABCTL)} top -i {shlex.quote(INVENTORY)}; echo {EXIT}$?; "
              "stty -a | tr ' ;' '\\n\\n' | grep -x -e icanon -e echo | tr '\\n' ' '; echo; sleep 600")
    return stack.machine.enter_command(["sh", "-c", script], "labuser", {"TERM": "screen"}, HOME)  # type: ignore[attr-defined]


@contextmanager
def top_pane(stack: Stack) -> Iterator[Pane]:
    pane = Pane(f"labctl-top-{os.getpid()}", top_argv(stack), width=80, height=24)
    try:
        yield pane
    finally:
        pane.close()


def columns(header: str) -> list[tuple[str, int, int]]:
    """(name, start, end) of each column's cells under ``header``: a left-aligned column's
    from where its name starts to where the next one's does; a number's from the end of the
    name before it to the end of its own."""
    found = [(m.group(), m.start(), m.end()) for m in re.finditer(r"\S+", header)]
    out = []
    for i, (name, start, end) in enumerate(found):
        if name in LEFT:
            out.append((name, start, found[i + 1][1] if i + 1 < len(found) else 10**6))
        else:
            out.append((name, found[i - 1][2] if i else 0, end))
    return out


def table(screen: list[str], first: str) -> dict[str, dict[str, str]]:
    """The rows of the table whose header starts with ``first``, by their first cell."""
    for i, line in enumerate(screen):
        if line.startswith(first + " "):
            spans = columns(line)
            rows = {}
            for row in screen[i + 1:]:
                if not row.strip() or row.startswith(("... ", GATEWAY_MARK)):
                    break
                cells = {name: row[start:end].strip() for name, start, end in spans}
                rows[cells[first]] = cells
            return rows
    return {}


def number(cell: str) -> float:
    text = cell.rstrip(GATEWAY_MARK)
    scale = {"k": 1e3, "M": 1e6}.get(text[-1:], 1.0)
    try:
        return float(text.rstrip("kM")) * scale
    except ValueError:
        return 0.0


def moving(screen: list[str]) -> bool:
    """Every service's row shows a non-zero rate (requests, prompt or generated tokens/s)."""
    rows = table(screen, "SERVICE")
    return all(name in rows and any(number(rows[name].get(c, "-")) > 0 for c in ("REQ/S", "PROMPT/S", "GEN/S"))
               for name in SERVICES)


def drawn(screen: list[str]) -> bool:
    """A frame with every service's row (before the first sample, the table is empty)."""
    return set(SERVICES) <= set(table(screen, "SERVICE"))


def restarted(screen: list[str]) -> bool:
    """native's restarts column (when the width shows it) counts the restart."""
    cell = table(screen, "SERVICE")["native"].get("RST")
    return cell is None or number(cell) >= 1


def state(screen: list[str], service: str) -> str | None:
    row = table(screen, "SERVICE").get(service)
    return row["STATE"] if row else None


def words(stack: Stack) -> set[str]:
    """Every whole word top may show on this stack."""
    vocabulary = {c.header for c in SERVICE_COLUMNS + ROUTE_COLUMNS} | set(SERVICES) | set(ROUTES)
    vocabulary |= {w for s in STATE_STYLE for w in s.split()} | set(STATE_WORDS.values())
    vocabulary |= set(KEYS.split()) | {"labctl", "top", "every", "1s", "rates", "over", "more", "tiny.gguf",
                                       "endpoint", "a", "wider", "terminal", "shows", "TTFT50,", "GPU"}
    vocabulary |= set(f"{GATEWAY_MARK} seen at the gateway: the server does not say it itself".split())
    return vocabulary


def broken_words(screen: list[str], vocabulary: set[str]) -> list[str]:
    bad = []
    for line in screen:
        for word in line.split():
            if word in vocabulary or VALUE.fullmatch(word) or word.rstrip(",") in vocabulary:
                continue
            if re.fullmatch(r"labuser@[\w.-]+|\d\d:\d\d:\d\d|\d+s", word):  # the title's host, clock, window
                continue
            bad.append(word)
    return bad


def check_fits(pane: Pane, screen: list[str], vocabulary: set[str]) -> None:
    assert len(screen) <= 24
    assert all(len(line) <= 80 for line in screen)
    assert not pane.wrapped(), "a line ran past the 80th column"
    assert not broken_words(screen, vocabulary), broken_words(screen, vocabulary)


def show(title: str, screen: list[str]) -> None:
    print(f"\n--- {title} (80x24) ---")
    print("\n".join(line.rstrip() for line in screen))


def check_clean_exit(pane: Pane) -> list[str]:
    screen = pane.wait(lambda s: any(line.startswith(EXIT) for line in s), 15)
    assert screen is not None, pane.lines()
    line = next(line for line in screen if line.startswith(EXIT))
    assert line == f"{EXIT}0", screen
    assert pane.value("alternate_on") == "0", "top left the alternate screen on"
    modes = screen[screen.index(line) + 1].split()
    assert sorted(modes) == ["echo", "icanon"], f"terminal not restored: stty says {modes}"
    assert pane.value("cursor_flag") == "1", "top left the cursor hidden"
    return screen


def test_top_under_load_then_a_backend_killed_then_q(demo_stack: Stack) -> None:
    vocabulary = words(demo_stack)
    with ExitStack() as stack:
        for route in ROUTES:  # native: llama-server; bindings: llama-cpp-python; both through the gateway
            stack.enter_context(gateway_load(demo_stack, route, interval=0.05))
        pane = stack.enter_context(top_pane(demo_stack))
        first = pane.wait(drawn, 30)
        assert first is not None, pane.lines()
        shown_at = time.monotonic()
        screen = pane.wait(moving, 5)
        took = time.monotonic() - shown_at
        assert screen is not None, "not every service showed a rate within 5 s:\n" + "\n".join(pane.lines())
        print(f"\nfirst frame {shown_at - pane.started:.1f}s after launch; every service moving {took:.1f}s later")
        show("under load", screen)
        check_fits(pane, screen, vocabulary)
        assert {r for r in table(screen, "ROUTE")} == set(ROUTES)

        unit = "labctl-native.service"
        pid = demo_stack.show(unit, "MainPID")["MainPID"]
        demo_stack.run("kill", "-KILL", pid, user=None)
        failed = pane.wait(lambda s: state(s, "native") == "failed", 20, interval=0.1)
        assert failed is not None, "\n".join(pane.lines())
        show("llama-server SIGKILLed: systemd restarting it", failed)
        check_fits(pane, failed, vocabulary)
        back = pane.wait(lambda s: state(s, "native") == "serving" and restarted(s), 60)
        assert back is not None, "\n".join(pane.lines())
        show("llama-server back", back)
        check_fits(pane, back, vocabulary)

        pane.send("q")
        show("after q", check_clean_exit(pane))


def test_top_quits_cleanly_on_sigterm(demo_stack: Stack) -> None:
    with top_pane(demo_stack) as pane:
        assert pane.wait(drawn, 30) is not None, pane.lines()
        # The python running labctl's entry point (not the shell around it, whose command line names it too).
        found = demo_stack.run("pgrep", "-u", "labuser", "-f", f"python[0-9.]* {LABCTL} top -i", user=None).stdout.split()
        assert len(found) == 1, found
        demo_stack.run("kill", "-TERM", found[0], user=None)
        show("after SIGTERM", check_clean_exit(pane))


def said(pane: Pane, text: str, timeout: float) -> list[str] | None:
    """The first screen that shows ``text`` (a message may be folded over two lines)."""
    return pane.wait(lambda s: text in " ".join(line.strip() for line in s), timeout)


def test_keys_ask_before_they_restart_or_switch(demo_stack: Stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """l shows the journal; r asks, n changes nothing, y restarts (labctl restart's
    operation); m offers the other models and switches after y (model switch's)."""
    from labctl.host.gguf_writer import write_tiny_gguf

    write_tiny_gguf(tmp_path / "other.gguf")
    demo_stack.machine.copy_in(tmp_path / "other.gguf", f"{HOME}/models/other.gguf", owner="labuser")  # type: ignore[attr-defined]
    unit = "labctl-bindings.service"
    try:
        with top_pane(demo_stack) as pane:
            assert pane.wait(drawn, 30) is not None, pane.lines()
            pane.send("l")
            journal = said(pane, "native: its journal", 15)
            assert journal is not None, pane.lines()
            show("l: native's journal", journal)
            pane.send("x")
            assert pane.wait(drawn, 10) is not None

            before = demo_stack.show(unit, "InvocationID")["InvocationID"]
            pane.send("j")
            pane.send("r")
            question = said(pane, "restart bindings (and wait until it is ready)? (y/N)", 10)
            assert question is not None, pane.lines()
            show("r: the question", question)
            pane.send("n")
            assert said(pane, "cancelled", 10) is not None
            assert demo_stack.show(unit, "InvocationID")["InvocationID"] == before
            pane.send("r")
            assert said(pane, "(y/N)", 10) is not None
            pane.send("y")
            done = said(pane, "restart bindings: ready in", 120)
            assert done is not None, pane.lines()
            show("r, y: restarted", done)
            assert demo_stack.show(unit, "InvocationID")["InvocationID"] != before

            pane.send("k")
            pane.send("m")
            picker = said(pane, "other.gguf", 15)
            assert picker is not None, pane.lines()
            show("m: the models", picker)
            # Earlier tests of the session may have left other models beside it: go down to it.
            for _ in range(10):
                if pane.wait(lambda s: any("> other.gguf" in line for line in s), 1) is not None:
                    break
                pane.send("Down")
            assert said(pane, "> other.gguf", 5) is not None, pane.lines()
            pane.send("Enter")
            assert said(pane, "switch to other.gguf? native, bindings drain and restart one at a time", 10), \
                pane.lines()
            pane.send("y")
            switched = said(pane, "switched to other.gguf (ok)", 240)
            assert switched is not None, pane.lines()
            show("m, y: switched", switched)
            assert demo_stack.run("readlink", f"{HOME}/models/current.gguf").stdout.strip() == "other.gguf"
            pane.send("q")
            check_clean_exit(pane)
    finally:  # the session's stack goes on with the model it started with
        if demo_stack.run("readlink", f"{HOME}/models/current.gguf").stdout.strip() != "tiny.gguf":
            assert demo_stack.labctl("model", "switch", "tiny.gguf", "-i", INVENTORY).rc == 0
