"""One way to lay text out for a terminal (labctl.text): folded between words and aligned,
measured in terminal cells as rich measures them, a CJK character or an emoji two cells.
Every user of it (status, doctor, the aligned columns, a fleet's lines, the GPU budget)
keeps each line within the width, in cells, and never breaks a word."""

from __future__ import annotations

import random
import textwrap

import pytest
from rich.cells import cell_len

from labctl.text import cell_width, fold, pad, terminal_width

pytestmark = pytest.mark.unit

WIDE = "模型"         # two CJK characters: four cells
EMOJI = "🦙"          # one character, two cells
COMBINING = "e\u0301"  # e and a combining acute accent: one cell


def test_cells_are_richs() -> None:
    assert (cell_width(WIDE), cell_width(EMOJI), cell_width(COMBINING), cell_width("abc")) == (4, 2, 1, 3)
    for text in (WIDE, EMOJI, COMBINING, "naïve", "Ω≈ç"):
        assert cell_width(text) == cell_len(text)
    assert pad(WIDE, 6) == WIDE + "  " and pad("abc", 6) == "abc   " and pad(WIDE * 3, 6) == WIDE * 3


def test_wide_characters_count_two_cells_each() -> None:
    words = [WIDE * 2, EMOJI * 3, "ok", WIDE + "/" + EMOJI] * 6  # 8, 6, 2, 7 cells
    text = " ".join(words)
    lines = fold(text, 20, "", "  ")
    assert all(cell_width(line) <= 20 for line in lines), lines
    assert " ".join(" ".join(lines).split()) == text  # nothing lost, no word split
    # Measured in characters, the same text would pack more words on a line and overflow it.
    assert any(cell_width(line) > 20 for line in textwrap.wrap(text, 20, subsequent_indent="  ",
                                                              break_long_words=False, break_on_hyphens=False))


def test_a_wide_word_longer_than_a_line_keeps_a_line_of_its_own() -> None:
    long_word = WIDE * 8  # 32 cells
    assert fold(f"model {long_word} ok", 20) == ["model", long_word, "ok"]


def test_a_line_of_exactly_the_width_in_cells_fits() -> None:
    assert fold(f"{WIDE * 4} {WIDE}", 21) == [f"{WIDE * 4} {WIDE}"]  # 16 + 1 + 4 = 21 cells
    assert fold(f"{WIDE * 4} {WIDE}", 20) == [WIDE * 4, WIDE]


def test_single_cell_text_folds_as_textwrap_folds_it() -> None:
    """For text of one cell a character, the fold is textwrap's (break only at spaces): the
    lines labctl printed before it measured in cells."""
    rng = random.Random(7)
    pieces = ["a", "word", "http://127.0.0.1:8080/v1/models", "x" * 30, " ", "  ", "\t", "\n", "\r\n", "-", "caf\u00e9",
              "\\x1b[2J", ""]
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 25)))
        width, indent, more = rng.choice([20, 33, 60, 80]), rng.choice(["", "      "]), rng.choice(["", "        "])
        expected = textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=more, break_long_words=False,
                                 break_on_hyphens=False) or [indent.rstrip()]
        assert fold(text, width, indent, more) == expected, (repr(text), width)


@pytest.mark.parametrize("environ,expected", [({"COLUMNS": "123"}, 123), ({"COLUMNS": "123", "TERM": "dumb"}, 123),
                                              ({"TERM": "dumb"}, 80), ({"COLUMNS": "wide"}, 80), ({}, 80)])
def test_the_terminal_width(environ: dict[str, str], expected: int, monkeypatch) -> None:
    """Under pytest nothing is a terminal: piped, 80."""
    for var in ("COLUMNS", "TERM"):
        monkeypatch.delenv(var, raising=False)
    for var, value in environ.items():
        monkeypatch.setenv(var, value)
    assert terminal_width() == expected


# --- every user of the layout, with wide characters -------------------------------------------


def assert_fits(lines: list[str], width: int, whole: list[str]) -> None:
    """Measured with rich's own cell_len, not the helper under test."""
    for line in lines:
        assert cell_len(line) <= width or len(line.split()) == 1, f"{cell_len(line)} > {width}: {line!r}"
    for text in whole:
        assert any(text in line for line in lines), f"{text!r} is not whole on any line:\n" + "\n".join(lines)


MODEL = f"current.gguf -> /srv/模型/{EMOJI}-llama-{WIDE * 6}.gguf"


def wide_status() -> object:
    """A status whose model and probe detail are CJK and emoji."""
    from labctl.ops.status import ServiceStatus, StatusReport

    svc = ServiceStatus(
        service="native", kind="llama-server", unit="labctl-native.service", active_state="active",
        sub_state="running", enabled="enabled", n_restarts=0, result="success", start_limit_hit=False, main_pid=1,
        memory_bytes=None, uptime_sec=None, bind="127.0.0.1", port=8080,
        probe={"ok": False, "check": "GET /health", "latency_ms": 1.0, "detail": f"{WIDE}{EMOJI} " * 30},
        model=MODEL, drift="none")
    return StatusReport([svc], {"enabled": False}, 0.1)


def test_status_lines_measure_cells() -> None:
    from labctl.statustext import status_lines

    for width in (80, 60):
        assert_fits(status_lines(wide_status(), width), width, [MODEL.split()[-1], f"{WIDE}{EMOJI}"])


def test_control_measured_in_characters_wide_lines_overflow(monkeypatch) -> None:
    """Control: with the layout's measure in characters, status's lines no longer fit,
    as the checks here (rich's own cell_len) see."""
    from labctl import text
    from labctl.statustext import status_lines

    monkeypatch.setattr(text, "cell_width", len)
    lines = status_lines(wide_status(), 60)
    assert any(cell_len(line) > 60 and len(line.split()) > 1 for line in lines), lines


def test_doctor_lines_measure_cells() -> None:
    from labctl.cli.tables import doctor_lines
    from labctl.ops.doctor import Check

    check = Check(f"model {WIDE}", "fail", f"{WIDE * 3} " * 10, fix=f"{EMOJI} " * 6)
    lines = doctor_lines(check, 40)
    assert_fits(lines, 40, [f"(fix: {EMOJI}"])
    assert lines[0].startswith("fail")


def test_aligned_columns_measure_cells() -> None:
    from labctl.cli.tables import aligned

    rows = [((f"{WIDE}.gguf", "1.0 MiB"), []), (("plain.gguf", "2.0 MiB"), []), ((f"{EMOJI}{EMOJI}.gguf", "3 MiB"), [])]
    lines, dropped = aligned(("FILE", "SIZE"), rows, 80, right=("SIZE",))
    assert dropped == []
    ends = {cell_len(line) for line in lines}  # SIZE is flush right: every line ends in the same cell
    assert len(ends) == 1, lines


def fleet_report(detail: str) -> object:
    from labctl.fleet.ansible import HostResult
    from labctl.fleet.apply import FleetReport

    services = [{"service": "native", "kind": "llama-server", "active_state": "active", "healthy": True,
                 "bind": "127.0.0.1", "probe": {"detail": detail}},
                {"service": f"s{WIDE}", "kind": "external", "external": True, "active_state": "external",
                 "healthy": True, "bind": "10.0.0.9", "probe": {"detail": "ready"}}]
    return FleetReport("status", {"gpu-1": HostResult("gpu-1", "10.0.0.1", "ok", report={"services": services}),
                                  "cpu": HostResult("cpu", "10.0.0.2", "unreachable", error=f"{EMOJI} no route")},
                       1.0)


def test_a_fleets_columns_measure_cells() -> None:
    from labctl.cli.fleet import fleet_status_lines

    lines = fleet_status_lines(fleet_report("ready"), 200)  # type: ignore[arg-type]
    # The kind column starts in the same cell on every row, wide service name or not.
    starts = {cell_len(line[:line.index(kind)]) for line in lines[1:]
              for kind in ("kind", "llama-server", "external") if kind in line}
    assert len(starts) == 1, lines
    long = fleet_status_lines(fleet_report(f"{WIDE}{EMOJI} " * 30), 60)  # type: ignore[arg-type]
    assert_fits(long, 60, [f"{WIDE}{EMOJI}"])


def test_the_gpu_budget_measures_cells() -> None:
    from labctl.ops.gpu_budget import Budget, Share, table

    budget = Budget([Share(f"coder{WIDE}", "llama-server", 2**30, f"weights {WIDE * 20} {EMOJI * 10} KV")],
                    8 * 2**30, "host.gpu_memory_gib", notes=[f"{WIDE} " * 20])
    assert_fits(table(budget, 50), 50, [WIDE * 20, EMOJI * 10])
