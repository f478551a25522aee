"""How the fleet's ``up``, ``down`` and ``status`` read: one line per host or per service, with
a host column, folded between words to the terminal's width (80 when piped)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from labctl.text import cell_width, fold, pad, shown

if TYPE_CHECKING:
    from labctl.fleet.apply import FleetReport


def _columns(rows: list[list[str]], width: int, last_indent: int = 6) -> list[str]:
    """``rows`` as aligned columns (widths in terminal cells); the last column folds under
    the others when the line is too long (between words, never inside one)."""
    if not rows:
        return []
    widths = [max(cell_width(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    out = []
    for row in rows:
        head = "  ".join(pad(cell, w) for cell, w in zip(row[:-1], widths))
        line = f"{head}  {row[-1]}".rstrip()
        if cell_width(line) <= width:
            out.append(line)
            continue
        out.append(head.rstrip())
        out += fold(row[-1], width, " " * last_indent, " " * (last_indent + 2))
    return out


def _changes(report: dict[str, Any] | None) -> str:
    if not isinstance(report, dict):
        return "-"
    if not report.get("changed"):
        return "no changes, nothing restarted"
    restarted = report.get("restarted") or []
    units = ", ".join(u.removeprefix("labctl-").removesuffix(".service") for u in restarted)
    return f"{len(report.get('files') or [])} file(s) changed; started or restarted: {units or 'none'}"


def fleet_up_lines(report: FleetReport, width: int = 80) -> list[str]:
    ok = sum(1 for r in report.hosts.values() if r.status == "ok")
    lines = [f"labctl {report.action} ({report.seconds:.1f}s): {ok}/{len(report.hosts)} host(s) ok"]
    rows = [["host", "address", "result", "what happened"]]
    for name, r in report.hosts.items():
        if r.status == "ok":
            what = _changes(r.report) if report.action == "up" else "stopped"
        else:
            what = r.error or r.status
        rows.append([shown(name), r.address, r.status, shown(what)])
    lines += _columns(rows, width)
    for warning in report.warnings:
        lines += fold(shown(f"warning: {warning}"), width, "", "  ")
    return lines


def _service_rows(host: str, address: str, status: dict[str, Any]) -> list[list[str]]:
    rows = []
    for s in status.get("services") or []:
        probe = s.get("probe") or {}
        state = "external" if s.get("external") and s.get("active_state") in ("external", "-") else \
            str(s.get("active_state"))
        detail = f"{probe.get('detail', '')}"
        if s.get("external") and s.get("kind") == "external":
            detail = f"on another host: {detail}" if s.get("bind") not in ("127.0.0.1", "::1") else detail
        rows.append([shown(host), shown(s.get("service")), shown(s.get("kind")), state,
                     "ok" if s.get("healthy") else "BAD", shown(detail)])
    if not rows:
        rows.append([shown(host), "-", "-", "-", "ok", f"{address}: no services"])
    return rows


def fleet_status_lines(report: FleetReport, width: int = 80) -> list[str]:
    lines = [f"labctl status ({report.seconds:.1f}s): {'healthy' if is_healthy(report) else 'NOT healthy'}, "
             f"{len(report.hosts)} host(s)"]
    rows = [["host", "service", "kind", "state", "", "detail"]]
    for name, r in report.hosts.items():
        if r.status != "ok" or not isinstance(r.report, dict) or "services" not in (r.report or {}):
            rows.append([shown(name), "-", "-", r.status, "BAD", shown(f"{r.address}: {r.error or 'no status'}")])
            continue
        rows += _service_rows(name, r.address, r.report)
    lines += _columns(rows, width)
    return lines


def is_healthy(report: FleetReport) -> bool:
    return report.ok and all((r.report or {}).get("healthy") for r in report.hosts.values())
