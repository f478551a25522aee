"""``labctl top``'s screen, laid out: a frame of labctl.ops.top as lines that fit the
terminal, measured in cells (labctl.text), never breaking a word.

Each table's columns go in by priority while they fit (a narrow terminal loses the time to
first token's median before the state, never half a column), values are never cut, and
rows that do not fit the height end in a line that says how many are left out. The lines
are plain strings with a style name each; the command (labctl.cli.top) paints them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from labctl.text import cell_width, fold, pad, shown

if TYPE_CHECKING:
    from labctl.ops.top import Frame, ServiceRow

#: (text, style): a style name of rich's ("" for none).
Line = tuple[str, str]

GATEWAY_MARK = "*"
STATE_STYLE = {"serving": "green", "idle": "", "loading": "yellow", "starting": "yellow", "draining": "yellow",
               "stopping": "yellow", "failed": "bold red", "no answer": "red", "no metrics": "yellow", "stopped": "red", "unknown": "dim"}


def rate(value: float | None) -> str:
    """Per second, to about three figures: ``0``, ``0.4``, ``12``, ``340``, ``1.2k``."""
    if value is None:
        return "-"
    if value == 0:
        return "0"
    if value < 10:
        return f"{value:.1f}"
    if value < 1000:
        return f"{value:.0f}"
    if value < 1e6:
        return f"{value / 1e3:.1f}k"
    return f"{value / 1e6:.1f}M"


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f}ms"
    if value < 10:
        return f"{value:.2f}s"
    return f"{value:.0f}s"


def size(value: int | None) -> str:
    if value is None:
        return "-"
    for unit, scale in (("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if value >= scale:
            scaled = value / scale
            return f"{scaled:.1f}{unit}" if scaled < 10 else f"{scaled:.0f}{unit}"
    return f"{value}B"


def share(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def count(value: int | None) -> str:
    return "-" if value is None else str(value)


@dataclass(frozen=True)
class Column:
    header: str
    cell: Callable[[object], str]
    priority: int          # lower goes in first
    right: bool = True     # numbers align right
    optional: bool = False  # left out, and not named, when no row has a value ("-")


def _figure(row: ServiceRow, name: str, fmt: Callable[[float | None], str]) -> str:
    text = fmt(getattr(row.figures, name))
    return text + GATEWAY_MARK if name in row.via_gateway and text != "-" else text


SERVICE_COLUMNS = (
    Column("SERVICE", lambda r: shown(r.name), 0, right=False),
    Column("STATE", lambda r: r.state, 1, right=False),
    Column("MODEL", lambda r: shown(r.model or "-"), 8, right=False),
    Column("RUN", lambda r: count(r.running), 4),
    Column("QUE", lambda r: count(r.queued), 5),
    Column("REQ/S", lambda r: _figure(r, "req_s", rate), 2),
    Column("PROMPT/S", lambda r: _figure(r, "prompt_tps", rate), 6),
    Column("GEN/S", lambda r: _figure(r, "gen_tps", rate), 3),
    Column("TTFT50", lambda r: _figure(r, "ttft_p50", seconds), 10),
    Column("TTFT95", lambda r: _figure(r, "ttft_p95", seconds), 7),
    Column("RST", lambda r: count(r.restarts), 9),
    Column("MEM", lambda r: size(r.memory), 9),
    Column("GPU", lambda r: size(r.gpu), 11, optional=True),
)

ROUTE_COLUMNS = (
    Column("ROUTE", lambda r: shown(r.route), 0, right=False),
    Column("TO", lambda r: shown(r.service or "endpoint"), 1, right=False),
    Column("ANS/S", lambda r: rate(r.answered_s), 2),
    Column("FALLBACK", lambda r: share(r.fallback_share), 3),
    Column("STATE", lambda r: r.state or "-", 4, right=False),
    Column("TTFT50", lambda r: seconds(r.figures.ttft_p50), 6),
    Column("TTFT95", lambda r: seconds(r.figures.ttft_p95), 5),
    Column("GATEWAY", lambda r: shown(r.gateway), 7, right=False),
)


def table(columns: tuple[Column, ...], rows: list[object], width: int) -> tuple[list[str], list[str]]:
    """(header and row lines at most ``width`` cells, the headers of the columns left out).
    Columns go in by priority while the widest value of each fits; their order on the line
    stays the one given."""
    cells = {c.header: [c.cell(r) for r in rows] for c in columns}
    columns = tuple(c for c in columns if not (c.optional and all(v == "-" for v in cells[c.header])))
    natural = {c.header: max([cell_width(c.header)] + [cell_width(v) for v in cells[c.header]]) for c in columns}
    chosen: set[str] = set()
    used = 0
    for c in sorted(columns, key=lambda c: c.priority):
        need = natural[c.header] + (1 if chosen else 0)
        if used + need <= width:
            chosen.add(c.header)
            used += need
    shown_cols = [c for c in columns if c.header in chosen]

    def line(values: list[str]) -> str:
        parts = []
        for c, v in zip(shown_cols, values):
            w = natural[c.header]
            parts.append(" " * (w - cell_width(v)) + v if c.right else pad(v, w))
        return " ".join(parts).rstrip()

    lines = [line([c.header for c in shown_cols])]
    for i in range(len(rows)):
        lines.append(line([cells[c.header][i] for c in shown_cols]))
    return lines, [c.header for c in columns if c.header not in chosen]


def _fold(text: str, width: int, style: str = "") -> list[Line]:
    """``text`` folded between words; a word longer than a whole line (a path, a URL) is
    cut there with an ellipsis rather than run past the screen's edge."""
    return [(crop(line, width), style) for line in fold(text, width, "", "  ")]


def crop(text: str, width: int) -> str:
    """One line of text read from elsewhere (a journal line), cut to ``width`` cells with
    an ellipsis when longer: the overlay shows each on a line of its own, like ``less -S``."""
    if cell_width(text) <= width:
        return text
    out, used = [], 0
    for ch in text:
        w = cell_width(ch)
        if used + w > width - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + "…"


def screen(frame: Frame, *, width: int, height: int, title: str, selected: int | None, message: list[str],
           keys: str, overlay: list[str] | None = None, overlay_title: str = "") -> list[Line]:
    """The whole screen: a title, the services, the routes, notes; the message (a question,
    an action's progress) and the keys at the bottom. ``overlay`` (a journal, a list to pick
    from) takes the tables' place. At most ``height`` lines, each at most ``width`` cells."""
    width, height = max(width, 20), max(height, 3)
    top: list[Line] = _fold(title, width, "bold")
    bottom: list[Line] = []
    for text in message:
        bottom += _fold(shown(text), width, "bold yellow")
    bottom += _fold(keys, width, "dim")
    room = height - len(top) - len(bottom)
    if room < 0:  # a tiny terminal: the keys, then what fits of the message and title
        return (top + bottom)[-height:]
    body: list[Line] = []
    if overlay is not None:
        body += _fold(shown(overlay_title), width, "bold") if overlay_title else []
        lines = [(crop(shown(line), width), "") for line in overlay]
        keep = max(room - len(body), 0)
        body += lines[-keep:] if keep else []
        return top + body[:room] + bottom
    service_lines, left_out = table(SERVICE_COLUMNS, list(frame.services), width)
    service_rows = [(line, ("reverse " if i == selected else "") + STATE_STYLE.get(r.state, ""))
                    for i, (line, r) in enumerate(zip(service_lines[1:], frame.services))]
    route_rows: list[Line] = []
    route_header: Line = ("", "")
    if frame.routes:
        route_lines, routes_out = table(ROUTE_COLUMNS, list(frame.routes), width)
        route_header, route_rows = (route_lines[0], "bold"), [(line, "") for line in route_lines[1:]]
        left_out += [h for h in routes_out if h not in left_out]
    notes: list[Line] = []
    if any(r.via_gateway for r in frame.services):
        notes += _fold(f"{GATEWAY_MARK} seen at the gateway: the server does not say it itself", width, "dim")
    if left_out:
        notes += _fold(f"a wider terminal shows {', '.join(left_out)}", width, "dim")
    for note in frame.notes:
        notes += _fold(shown(note), width, "yellow")
    # A short terminal loses the notes first, then the blank line, then routes' rows, then
    # services' rows (the selected one stays), a cut table saying how many rows it hides.
    services = [(service_lines[0], "bold")] + service_rows
    routes = [route_header] + route_rows if route_rows else []
    spacer: list[Line] = [("", "")] if routes else []
    notes = notes[:max(room - len(services) - len(spacer) - len(routes), 0)]
    if len(services) + len(spacer) + len(routes) > room:
        spacer = []
    if len(services) + len(routes) > room:
        routes = _block(route_header, route_rows, room - len(services), None) if routes else []
    if len(services) + len(routes) > room:
        services = _block((service_lines[0], "bold"), service_rows, room - len(routes), selected)
    return top + services + spacer + routes + notes + bottom


def _block(header: Line, rows: list[Line], keep: int, selected: int | None) -> list[Line]:
    """A table's header and rows in at most ``keep`` lines: rows left out from the end (or
    before the selected row, which stays), the last line saying how many; nothing when not
    even the header and one row fit."""
    if keep >= 1 + len(rows):
        return [header] + rows
    if keep < 2:
        return []
    room = keep - 2  # the header, and the line that counts what is left out
    start = 0 if selected is None or selected < room else selected - room + 1
    kept = rows[start:start + room]
    return [header] + kept + [(f"... {len(rows) - len(kept)} more", "dim")]
