"""``labctl top``'s screen (labctl.cli.topview) at 80, 100 and 200 columns and 24 and 40
lines, over a frame made from the real servers' captured answers (test_top_figures), and
the keys it reads from a terminal."""

from __future__ import annotations

import re

import pytest
from test_top_figures import demo_targets, history

from labctl.cli.top import keys_of
from labctl.cli.topview import screen
from labctl.ops import top
from labctl.text import cell_width

pytestmark = pytest.mark.unit


def test_keys_from_terminal_bytes() -> None:
    assert keys_of(b"\x1b[Aj\x1b[B\x1bOAq\r\x1b[1;5Cy\x1b") == ["up", "j", "down", "up", "q", "enter", "y", "esc"]


# --- the screen --------------------------------------------------------------------------------

TOKEN = re.compile(r"\S+")


def many(frame: top.Frame, n: int) -> top.Frame:
    rows = [r.__class__(**{**r.__dict__, "name": f"backend-{i:02d}"}) for i in range(n) for r in frame.services[:1]]
    return top.Frame(frame.services + rows, frame.routes, frame.notes + [
        "no unit states: Failed to connect to bus: No such file or directory"], frame.window)


def vocabulary(frame: top.Frame, lines: list[str]) -> set[str]:
    """Every whole word the screen may show: the table cells and headers, and the words of
    the title, notes, message and keys."""
    from labctl.cli import topview

    words: set[str] = set()
    for columns, rows in ((topview.SERVICE_COLUMNS, frame.services), (topview.ROUTE_COLUMNS, frame.routes)):
        for c in columns:
            words.add(c.header)
            words |= {v for r in rows for v in TOKEN.findall(c.cell(r))}
    for line in lines:
        words |= set(TOKEN.findall(line))
    return words


@pytest.mark.parametrize("width", [80, 100, 200])
@pytest.mark.parametrize("height", [24, 40])
@pytest.mark.parametrize("services", [0, 30])
def test_every_line_fits_and_no_word_is_broken(width: int, height: int, services: int) -> None:
    frame = top.frame(demo_targets(), history())
    if services:
        frame = many(frame, services)
    title = "labctl top  labuser@box  12:00:00  every 1s  rates over 10s"
    message = ["restart native (3s): waiting for native to answer a completion; its model loads from "
               "/home/labuser/models/current.gguf"]
    keys = "up/down select  r restart  m switch model  l journal  q quit"
    lines = screen(frame, width=width, height=height, title=title, selected=len(frame.services) - 1,
                   message=message, keys=keys)
    texts = [t for t, _ in lines]
    assert len(texts) <= height
    assert all(cell_width(t) <= width for t in texts), [t for t in texts if cell_width(t) > width]
    allowed = vocabulary(frame, [title, keys, *message, *frame.notes,
                                 "* seen at the gateway: the server does not say it itself",
                                 "a wider terminal shows MODEL, QUE, PROMPT/S, TTFT50, RST, MEM, GATEWAY more ...",
                                 *[f"{n}" for n in range(100)]])
    broken = [w for t in texts for w in TOKEN.findall(t) if w.strip(",") not in allowed and w not in allowed]
    assert not broken, broken
    assert texts[-1] == keys if width >= len(keys) else True
    # The selected service stays on the screen, and a cut table says what it hides.
    last = frame.services[-1].name
    assert any(t.startswith(last + " ") for t in texts)
    if services and height < len(frame.services) + 4:
        assert any(re.fullmatch(r"\.\.\. \d+ more", t) for t in texts)
    if width >= 100:
        assert any("MODEL" in t for t in texts) and any("TTFT95" in t for t in texts)
    if width == 80 and height == 24 and not services:
        # The demo at 80x24: every service and route, their rates and state.
        assert all(any(t.startswith(r.name + " ") for t in texts) for r in frame.services)
        assert sum(1 for t in texts if t.startswith(("native ", "bindings ", "small "))) >= 4


def test_a_journal_overlay_crops_long_lines() -> None:
    frame = top.frame(demo_targets(), history())
    journal = ["short line", "x" * 300, "a line with a \x1b[31mcolour escape\x1b[0m in it"]
    lines = screen(frame, width=80, height=24, title="t", selected=0, message=[], keys="any key: back",
                   overlay=journal, overlay_title="native: its journal")
    texts = [t for t, _ in lines]
    assert all(cell_width(t) <= 80 for t in texts)
    assert any(t.endswith("…") for t in texts)
    assert not any("\x1b" in t for t in texts)  # shown, not obeyed
