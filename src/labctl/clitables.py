"""Rich tables for the CLI (presentation only; the data comes from the core)."""

from __future__ import annotations

from rich.table import Table

from labctl.status import StatusReport


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f} MiB"


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def status_table(report: StatusReport) -> Table:
    table = Table(title=f"labctl status ({report.seconds:.2f}s)", title_justify="left")
    for column in ("service", "kind", "unit state", "restarts", "pid", "memory", "uptime", "listen", "probe",
                   "model", "drift"):
        table.add_column(column, overflow="fold")
    for s in report.services:
        state = f"{s.active_state}/{s.sub_state}"
        if s.result and s.result != "success":
            state += f" ({s.result})"
        colour = "green" if s.active_state == "active" else "red" if s.active_state == "failed" else "yellow"
        restarts = f"{s.n_restarts}" + (" (start limit hit)" if s.start_limit_hit else "")
        probe = s.probe
        probe_text = f"{'ok' if probe['ok'] else 'FAIL'} {probe['latency_ms']:.0f}ms {probe['detail']}"
        if s.metrics:
            probe_text += " | " + ", ".join(f"{k.split(':', 1)[1]}={v:g}" for k, v in sorted(s.metrics.items()))
        table.add_row(s.service, s.kind, f"[{colour}]{state}[/{colour}] {s.enabled}", restarts,
                      str(s.main_pid or "-"), _mib(s.memory_bytes), _uptime(s.uptime_sec), f"{s.bind}:{s.port}",
                      f"[{'green' if probe['ok'] else 'red'}]{probe_text}[/]", s.model or "-",
                      "-" if s.drift == "none" else f"[yellow]{s.drift}[/yellow]")
    containers = report.monitoring.get("containers") or []
    for c in containers:  # type: ignore[union-attr]
        table.add_row(str(c.get("service")), "container", f"{c.get('state')}/{c.get('health') or '-'}", "-", "-",
                      "-", "-", "-", "-", str(c.get("image")), "-")
    captions = [report.note] if report.note else []
    if report.monitoring.get("enabled") and not containers and report.monitoring.get("engine"):
        captions.append(f"monitoring: {report.monitoring['engine']}")
    table.caption = "; ".join(captions) or None
    return table
