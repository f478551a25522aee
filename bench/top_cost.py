"""What ``labctl top`` costs the servers it watches: their CPU time with top running at its
refresh rate against without it, in the same run.

The real servers (llama-server, llama-cpp-python and the LiteLLM gateway, started on
loopback from labctl's rendered units: tests/harness/localstack.py) run the whole time; top
runs for real in an 80x24 tmux pane (tests/harness/terminal.py) in alternate phases, several
rounds of each, so drift (a neighbour's load, a cache warming) falls on both. The servers'
CPU is read from /proc (utime + stime of each process), and the figure is the extra CPU
they spend per second of wall time with top watching, as a share of one core; the issue's
goal is under 1%. Idle by default (top's cost is then all there is to see); --load adds
steady requests through the gateway to both phases.

    PYTHONPATH=src:tests .venv/bin/python bench/top_cost.py [--interval 1] [--phase 20] [--rounds 3] [--load 2]

This host has no systemd user manager: top's `systemctl --user show` fails at once each
sample (its own cost, not the servers'), and every state comes from the servers' answers,
which is what the servers pay for.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from harness import localstack
from harness.terminal import Pane

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and of its children it waited for, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / TICK


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a server that forks workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def servers_cpu(pids: dict[str, int]) -> dict[str, float]:
    return {name: sum(cpu_seconds(p) for p in tree(pid)) for name, pid in pids.items()}


def load(stack, stop: threading.Event, per_second: float) -> None:  # type: ignore[no-untyped-def]
    """Steady requests through the gateway, every route in turn."""
    url = stack.gateway_url + "/v1/chat/completions"
    routes = ("native", "bindings", "small")
    with httpx.Client(timeout=60, trust_env=False) as client:
        i = 0
        while not stop.is_set():
            client.post(url, headers=stack.headers(), json={"model": routes[i % 3], "max_tokens": 4,
                                                            "messages": [{"role": "user", "content": "hi"}]})
            i += 1
            stop.wait(1 / per_second)


def phase(pids: dict[str, int], top_argv: list[str] | None, seconds: float) -> tuple[dict[str, float], float, float]:
    """(CPU seconds each server spent, wall seconds, top's own CPU seconds) over ``seconds``,
    with ``top_argv`` running in a tmux pane from the start when given."""
    before, t0 = servers_cpu(pids), time.monotonic()
    pane = Pane(f"labctl-top-cost-{os.getpid()}", ["sh", "-c", shlex.join(top_argv)]) if top_argv else None
    top_cpu = 0.0
    try:
        if pane is not None:
            top_pid = int(pane.value("pane_pid"))
            assert pane.wait(lambda s: any(line.startswith("SERVICE") for line in s), 30), pane.lines()
        time.sleep(max(seconds - (time.monotonic() - t0), 0))
        after, t1 = servers_cpu(pids), time.monotonic()
        if pane is not None:
            top_cpu = sum(cpu_seconds(p) for p in tree(top_pid))
    finally:
        if pane is not None:
            pane.close()
    return {n: after[n] - before[n] for n in pids}, t1 - t0, top_cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--interval", type=float, default=1.0, help="top's seconds between samples")
    parser.add_argument("--phase", type=float, default=20.0, help="seconds of each phase")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--load", type=float, default=0.0, help="requests/s through the gateway (0: idle)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="labctl-top-cost-"))
    stack = localstack.start(root)
    stop = threading.Event()
    worker = threading.Thread(target=load, args=(stack, stop, args.load), daemon=True) if args.load else None
    pids = {name: server.proc.pid for name, server in stack.servers.items()}
    top_argv = ["env", f"PYTHONPATH={os.environ.get('PYTHONPATH', '')}", f"HOME={root / 'home'}", "TERM=screen",
                sys.executable, "-m", "labctl", "top", "-i", str(stack.inventory_path), "--interval", str(args.interval)]
    totals = {"without": {n: 0.0 for n in pids}, "with": {n: 0.0 for n in pids}}
    wall = {"without": 0.0, "with": 0.0}
    top_cpu = 0.0
    try:
        if worker:
            worker.start()
        time.sleep(3)  # the servers settle after their first answers
        print(f"labctl top cost: {', '.join(pids)}; top every {args.interval:g}s; {args.rounds} rounds of "
              f"{args.phase:g}s per phase; load {args.load:g} req/s")
        # LiteLLM pays once, at the first read of its metrics, what no later read does (its
        # exporter's set-up): measured apart, so that every round is the steady state.
        spent, seconds, _ = phase(pids, top_argv, 10.0)
        print(f"  warm-up, top's first {seconds:.0f} s: servers {sum(spent.values()):.3f} CPU s "
              f"({', '.join(f'{n} {v:.3f}' for n, v in spent.items())}): the gateway's first metrics read, "
              "once per gateway process")
        for round_ in range(args.rounds):
            for which in ("without", "with"):
                spent, seconds, used = phase(pids, top_argv if which == "with" else None, args.phase)
                wall[which] += seconds
                top_cpu += used
                for name in pids:
                    totals[which][name] += spent[name]
                print(f"  round {round_ + 1} {which:>7} top: servers {sum(spent.values()):6.3f} CPU s in "
                      f"{seconds:5.1f} s = {100 * sum(spent.values()) / seconds:5.2f}% of a core")
    finally:
        stop.set()
        stack.stop_all()
    print(f"{'server':<10} {'without top':>12} {'with top':>12} {'extra':>9}   (% of one core)")
    for name in pids:
        a = 100 * totals["without"][name] / wall["without"]
        b = 100 * totals["with"][name] / wall["with"]
        print(f"{name:<10} {a:11.3f}% {b:11.3f}% {b - a:+8.3f}%")
    a = 100 * sum(totals["without"].values()) / wall["without"]
    b = 100 * sum(totals["with"].values()) / wall["with"]
    ratio = f"{b / a:.2f}x" if a > 0 else "n/a"
    print(f"{'all':<10} {a:11.3f}% {b:11.3f}% {b - a:+8.3f}%   with/without {ratio}")
    print(f"top itself (labctl's process and its systemctl calls, not the servers'): "
          f"{100 * top_cpu / wall['with']:.2f}% of a core")
    print(f"verdict: top costs the servers {b - a:+.3f}% of a core at every {args.interval:g}s "
          f"({'under' if b - a < 1 else 'OVER'} the 1% goal)")


if __name__ == "__main__":
    main()
