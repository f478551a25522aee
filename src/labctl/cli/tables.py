"""Rich tables for the CLI (presentation only; the data comes from the core).

The ``*_lines`` forms are plain strings: only the tables (``--wide``) and ``plain`` import
rich's Table and Text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from labctl.statustext import mib as _mib
from labctl.statustext import uptime as _uptime
from labctl.text import cell_width, fold, shown  # shown: also used by the CLI's commands

if TYPE_CHECKING:
    from collections.abc import Sequence

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from labctl.ops.doctor import Check
    from labctl.ops.gateway_check import RouteResult
    from labctl.ops.status import StatusReport
    from labctl.ops.switch import ModelEntry


def plain(text: object, style: str = "") -> Text:
    """``text``, escaped by :func:`shown`, as a rich Text: printed literally, never read as
    ``[markup]`` or ``:emoji:``."""
    from rich.text import Text

    return Text(shown(text), style=style)


def unfolded(table: Table, console: Console) -> Table:
    """``table`` at its natural width when that is wider than the console, so no cell is
    folded or cut: a name is shown whole, as it is spelled (the console soft-wraps)."""
    natural = console.measure(table, options=console.options.update_width(1 << 16)).maximum
    if natural > console.width:
        table.width = natural
    return table


def _drift_cell(drift: str, drop_ins: int) -> Text:
    from rich.text import Text

    text = plain("-") if drift == "none" else plain(drift, "yellow")
    if drop_ins:
        text = Text.assemble(text, " ", plain(f"+{drop_ins} drop-in{'s' if drop_ins > 1 else ''}", "cyan"))
    return text


def status_table(report: StatusReport) -> Table:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"labctl status ({report.seconds:.2f}s)", title_justify="left")
    for column in ("service", "kind", "unit state", "restarts", "pid", "memory", "uptime", "listen", "probe",
                   "model", "drift"):
        table.add_column(column, overflow="fold")
    for s in report.services:
        # Every cell is a Text: names, details and model links come from files and processes,
        # so nothing in them is markup, and shown() escapes what a terminal would act on.
        state = f"{s.active_state}/{s.sub_state}"
        if s.result and s.result != "success":
            state += f" ({s.result})"
        colour = "green" if s.active_state == "active" else "red" if s.active_state == "failed" else "yellow"
        restarts = f"{s.n_restarts}" + (" (start limit hit)" if s.start_limit_hit else "")
        probe = s.probe
        probe_text = f"{'ok' if probe['ok'] else 'FAIL'} {probe['latency_ms']:.0f}ms {probe['detail']}"
        if s.metrics:
            probe_text += " | " + ", ".join(f"{k.split(':', 1)[1]}={v:g}" for k, v in sorted(s.metrics.items()))
        table.add_row(plain(s.service), plain(s.kind), Text.assemble(plain(state, colour), " ", plain(s.enabled)),
                      plain(restarts), plain(s.main_pid or "-"), plain(_mib(s.memory_bytes)),
                      plain(_uptime(s.uptime_sec)), plain(f"{s.bind}:{s.port}"),
                      plain(probe_text, "green" if probe["ok"] else "red"), plain(s.model or "-"),
                      _drift_cell(s.drift, len(s.drop_ins)))
    from labctl.ops.status import endpoint_host

    for e in report.endpoints:
        if e.probe is None:
            reach = plain("not asked (--endpoints)", "dim")
        else:
            reach = plain(f"{'ok' if e.probe['ok'] else 'FAIL'} {e.probe['latency_ms']:.0f}ms {e.probe['detail']}",
                          "green" if e.probe["ok"] else "red")
        table.add_row(plain(e.name), plain("endpoint"), plain(e.provider), *(plain("-") for _ in range(4)),
                      plain(endpoint_host(e)), reach, plain(", ".join(e.routes) or "-"), plain("-"))
    containers = report.monitoring.get("containers") or []
    for c in containers:  # type: ignore[union-attr]
        table.add_row(plain(c.get("service")), plain("container"), plain(f"{c.get('state')}/{c.get('health') or '-'}"),
                      *(plain("-") for _ in range(6)), plain(c.get("image")), plain("-"))
    captions = [report.note] if report.note else []
    if report.monitoring.get("enabled") and not containers and report.monitoring.get("engine"):
        captions.append(f"monitoring: {report.monitoring['engine']}")
    table.caption = plain("; ".join(captions)) if captions else None
    return table


# --- plain columns that fit the terminal: doctor, model list, gateway check ----------------

GAP = "  "


def doctor_lines(check: Check, width: int = 80) -> list[str]:
    """One doctor check as lines that fit ``width``: the status word first, the rest folded
    between words with a hanging indent under the check's text, so ``ok``/``warn``/``fail``
    stays alone in the first column (``--wide``: one line each, as ``str(check)``). The
    ``(fix: ...)`` starts a line of its own when it does not fit whole after the message."""
    from dataclasses import replace

    bare = str(replace(check, fix=""))
    fix = shown(str(check)[len(bare):].strip())  # "(fix: ...)" as Check.__str__ writes it, or ""
    lines = fold(shown(bare), width, "", "     ")
    if not fix:
        return lines
    if cell_width(lines[-1]) + 1 + cell_width(fix) <= max(width, 20):
        lines[-1] += " " + fix
        return lines
    return lines + fold(fix, width, "     ", "       ")


Row = tuple["Sequence[object]", "Sequence[str]"]


def aligned(headers: Sequence[str], rows: Sequence[Row], width: int = 80, *, name: int = 0,
            drop: Sequence[str] = (), right: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """``rows`` (cells, lines to print below the row) as columns aligned under a header
    line, like ``docker ps``: no cell is ever cut or folded. The columns in ``drop`` are left
    out, first ones first, until the ``name`` column holds three names in four at their
    full length; a longer name gets a line of its own, the row's other cells on the next
    line. When not even that fits, each row is its name and then its cells as ``header
    value``, folded between words. The lines below a row (a note, an error) are folded and
    indented. Returns the lines and the headers left out."""
    heads = [shown(h) for h in headers]
    table = [[shown(c) for c in cells] for cells, _ in rows]
    below = [[shown(b) for b in extra] for _, extra in rows]
    natural = [max([cell_width(h)] + [cell_width(r[i]) for r in table]) for i, h in enumerate(heads)]
    dropped = [list(headers).index(h) for h in drop]
    sets = [[i for i in range(len(heads)) if i not in dropped[:k]] for k in range(len(dropped) + 1)]

    def room(cols: list[int]) -> int:  # columns left for the name once the others are laid out
        return width - sum(natural[i] + len(GAP) for i in cols if i != name)

    # The name column holds at least three names in four; a longer name gets a line of its
    # own rather than the table losing a column for it.
    floor = max(cell_width(heads[name]), 8)
    lengths = sorted(cell_width(r[name]) for r in table)
    need = max(floor, lengths[-(-3 * len(lengths) // 4) - 1] if lengths else 0)
    cols = next((c for c in sets if room(c) >= need), None)
    if cols is None and room(sets[-1]) >= floor:
        cols = sets[-1]
    if cols is None:
        return _stacked(heads, table, below, width, name), []
    widths = dict((i, natural[i]) for i in cols)
    widths[name] = max([cell_width(heads[name])] + [cell_width(r[name]) for r in table if cell_width(r[name]) <= room(cols)])
    flush_right = {list(headers).index(h) for h in right}

    def line(cells: list[str], upto: int | None = None) -> str:
        parts = []
        for i in cols:
            if upto is not None and i > upto:
                break
            fill = " " * max(widths[i] - cell_width(cells[i]), 0)
            parts.append(cells[i] if i == upto else fill + cells[i] if i in flush_right else cells[i] + fill)
        return GAP.join(parts).rstrip()

    lines = [line(heads)]
    for cells, extra in zip(table, below):
        if cell_width(cells[name]) > widths[name]:
            lines += fold(line(cells, upto=name), width, "", "    ")  # the name whole, on its own line
            lines.append(line(["" if i <= name else c for i, c in enumerate(cells)]))
        else:
            lines.append(line(cells))
        for text in extra:
            lines += fold(text, width, "    ", "      ")
    return lines, [heads[i] for i in range(len(heads)) if i not in cols]


def _stacked(heads: list[str], table: list[list[str]], below: list[list[str]], width: int, name: int) -> list[str]:
    lines = []
    for cells, extra in zip(table, below):
        lines += fold(" ".join(c for c in cells[:name + 1] if c.strip()), width, "", "    ")
        rest = ", ".join(f"{heads[i].lower()} {c}" for i, c in enumerate(cells) if i > name and c not in ("", "-"))
        if rest:
            lines += fold(rest, width, "    ", "      ")
        for text in extra:
            lines += fold(text, width, "    ", "      ")
    return lines


def left_out(headers: list[str], width: int) -> list[str]:
    """The line that says which columns did not fit, or none."""
    if not headers:
        return []
    return fold(f"({', '.join(headers)} left out to fit {width} columns; --wide shows every column)", width)


def _model_size(info: dict[str, object]) -> str:
    return f"{int(info.get('size') or 0) / 2**20:.1f} MiB"  # type: ignore[call-overload]


def model_lines(entries: Sequence[ModelEntry], width: int = 80) -> list[str]:
    """``model list`` as aligned columns that fit ``width``: the file name whole (``*``
    marks the one current.gguf points at), then size, architecture, context length,
    quantisation and the GGUF's own name, as many as fit; a problem on a line below."""
    rows: list[Row] = []
    for e in entries:
        info = e.info or {}
        rows.append(((("* " if e.current else "  ") + e.name, _model_size(info) if info else "-",
                      info.get("architecture") or "-", info.get("context_length") or "-",
                      info.get("quantization") or "-", info.get("name") or "-"),
                     [f"note: {e.problem}"] if e.problem else []))
    lines, dropped = aligned(("  FILE", "SIZE", "ARCH", "CONTEXT", "QUANT", "NAME"), rows, width,
                             drop=("NAME", "ARCH", "CONTEXT", "QUANT"), right=("SIZE", "CONTEXT"))
    return lines + left_out(dropped, width)


def model_table(entries: Sequence[ModelEntry]) -> Table:
    """``model list --wide``: one row per model, every column."""
    from rich.table import Table

    table = Table()
    for column in ("", "file", "size", "name", "architecture", "context", "quantisation", "note"):
        table.add_column(column)
    for e in entries:
        info = e.info or {}
        cells = ("*" if e.current else "", e.name, _model_size(info) if info else "-", info.get("name") or "-",
                 info.get("architecture") or "-", info.get("context_length") or "-", info.get("quantization") or "-",
                 e.problem or "")
        table.add_row(*(plain(cell) for cell in cells))
    return table


def _gateway_note(r: RouteResult) -> list[str]:
    if r.error:
        return [f"error: {r.error}"]
    if not r.ok and r.answered_by != r.expected:
        return [f"answered by {r.answered_by or 'no route'}, not {r.expected}"]
    if not r.ok:
        return [f"status {r.status or '-'}"]
    return []


def gateway_lines(results: Sequence[RouteResult], width: int = 80) -> list[str]:
    """``gateway check`` as aligned columns that fit ``width``: ok/FAIL, the check and its
    route, the fallback target, then status, who answered, backend, fallbacks tried and
    latency, as many as fit; an error on a line below."""
    if not results:
        return ["labctl gateway check: nothing to check (the gateway has no routes)"]
    failed = sum(1 for r in results if not r.ok)
    title = f"labctl gateway check: {len(results)} check(s), {f'{failed} FAILED' if failed else 'all ok'}"
    rows: list[Row] = [(("ok" if r.ok else "FAIL", r.check, r.route, r.fallback_to or "-", r.status or "-",
                         r.answered_by or "-", r.backend or "-",
                         "-" if r.attempted_fallbacks is None else r.attempted_fallbacks, f"{r.latency_ms:.0f} ms"),
                        _gateway_note(r)) for r in results]
    lines, dropped = aligned(("RESULT", "CHECK", "ROUTE", "FALLBACK TO", "STATUS", "ANSWERED BY", "BACKEND",
                              "FALLBACKS", "LATENCY"), rows, width, name=2,
                             drop=("FALLBACKS", "ANSWERED BY", "STATUS", "LATENCY", "BACKEND"),
                             right=("STATUS", "FALLBACKS", "LATENCY"))
    return fold(title, width, "", "  ") + lines + left_out(dropped, width)


def gateway_table(results: Sequence[RouteResult]) -> Table:
    """``gateway check --wide``: one row per check, every column."""
    from rich.table import Table

    table = Table(title="labctl gateway check", title_justify="left")
    for column in ("check", "route", "fallback to", "status", "answered by", "backend", "fallbacks", "ms", "error"):
        table.add_column(column, overflow="fold")
    for r in results:
        # Headers and errors come from the gateway and backends: shown, never obeyed.
        table.add_row(*(plain(cell) for cell in (
            r.check, r.route, r.fallback_to or "-", str(r.status or "-"), r.answered_by or "-", r.backend or "-",
            str(r.attempted_fallbacks if r.attempted_fallbacks is not None else "-"), f"{r.latency_ms:.0f}",
            r.error or "")))
    return table
