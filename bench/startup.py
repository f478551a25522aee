"""Start-up of the CLI beside the floors it is measured against, all in one run.

    .venv/bin/python bench/startup.py [--runs 15] [--inventory FILE] [--as-is]
    flock /tmp/lab/heavy.lock .venv/bin/python bench/startup.py --machine   (as root)

``--machine`` boots the CPU demo on a systemd machine (as the system tests do) and runs the
same measurement inside it, against the demo's inventory with every service answering.

Each row runs --runs times in a fresh process, the rows interleaved so that a busy
machine slows them alike; the table gives the median and the minimum in ms, and the ratio
of the median to the row's floor:

- ``python -c pass``: the same interpreter doing nothing, the floor of every command row;
- ``python -c "import labctl.cli"``, ``labctl --help``, ``labctl version``;
- ``labctl status -i INV``, twice: ``(full)`` with LABCTL_NO_SNAPSHOT=1 (parse, render, probe:
  the typer CLI), and ``(snapshot)``, the fast path of labctl.__main__ from the plan the
  full one kept (docs/cli.md, "status"). By default INV is a CPU-demo-like inventory (llama-server,
  llama-cpp-python, LiteLLM) on free ports where nothing listens, so every probe is a
  refused connection (give --inventory to measure a real one, e.g. the CPU demo up). Its
  floor is what status cannot avoid: one ``systemctl --user show`` of the same units with
  the same properties (only when a user manager answers here; otherwise that part is
  skipped, and the table says so) plus one bare probe round, measured in this process:
  a TCP connect and one GET of the path labctl's probe asks first, for every service at
  once.

Then, for ``status``: whether the snapshot path prints what the full CLI prints (text and
``--json``, with the figures that change between two calls masked: times, latencies, uptime,
memory), and where the snapshot path's time goes: medians of --runs instrumented runs of the
steps labctl.__main__ takes, as times from the start of its Python code (its first imports,
after ``import re`` as pip's console script does; the snapshot read and found intact, then
fresh; when systemctl starts and answers; when the probes start and, about, when the
slowest answers; the report; the text), and the rest of the wall time: the interpreter's
start and exit (a full exit here: the command itself skips the interpreter's teardown); then
its costliest imports (``python -X importtime``) and which module imported each private one
(``_socket`` by socket...: labctl itself imports none).

The children get a private bytecode cache (PYTHONPYCACHEPREFIX in a temporary directory,
warmed by one untimed run of each row), as an installed labctl has one; --as-is keeps this
environment as it is (with PYTHONDONTWRITEBYTECODE=1 every labctl module is compiled again
on every run). Prints figures; asserts nothing (performance claims live here, not in timed
tests).
"""

from __future__ import annotations

import argparse
import ast
import getpass
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PYTHON = sys.executable
LABCTL = str(Path(PYTHON).with_name("labctl"))


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    """Seconds that each of ``runs`` calls of ``fn`` took."""
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def run(argv: list[str], env: dict[str, str] | None = None) -> Callable[[], object]:
    """A call that runs ``argv`` to its end, its output thrown away (any exit code)."""
    return lambda: subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False)


def interleaved(rows: dict[str, Callable[[], object]], runs: int) -> dict[str, list[float]]:
    """``runs`` rounds of one call of each row, in turn: seconds per call, per row."""
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(runs):
        for name, fn in rows.items():
            times[name] += timed(fn, 1)
    return times


def free_ports(n: int) -> list[int]:
    """``n`` ports where nothing listens (bound, then let go)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def refused_inventory(tmp: Path) -> Path:
    """The CPU demo's three services on ports where nothing listens."""
    native, bindings, gateway = free_ports(3)
    path = tmp / "inventory.yaml"
    path.write_text(f"""version: 1
host: {{user: {getpass.getuser()}, gpu: false, home: {tmp}, models_dir: {tmp}/models}}
services:
  native: {{kind: llama-server, binary: /bin/true, port: {native}, alias: native, n_gpu_layers: 0}}
  bindings: {{kind: llama-cpp-python, runtime: {{python: {PYTHON}}}, port: {bindings}, alias: bindings,
              n_gpu_layers: 0}}
  gateway:
    kind: litellm
    runtime: {{python: {PYTHON}}}
    port: {gateway}
    routes: [{{name: native, service: native}}, {{name: bindings, service: bindings}}]
    fallbacks: {{native: [bindings]}}
monitoring: {{enabled: false}}
""")
    return path


def status_floor(inventory: Path, env: dict[str, str]) -> tuple[Callable[[], object] | None, Callable[[], object], str]:
    """(``systemctl --user show`` of the inventory's units, or None without a user manager;
    one bare probe round; a note on what the round asks)."""
    from labctl.host.systemd import SHOW_PROPERTIES, UserManager
    from labctl.load import load_inventory
    from labctl.inventory.schema import unit_name

    inv = load_inventory(inventory).inventory
    manager = UserManager()
    show = None
    if manager.reachable()[0]:
        argv = ["systemctl", "--user", "show", "--property=" + ",".join(SHOW_PROPERTIES),
                *(unit_name(n) for n in inv.managed())]
        show = run(argv, env={**env, **manager.env})
    # What labctl's probe of each service asks first ("GET /health"), from status itself.
    report = json.loads(subprocess.run([LABCTL, "status", "-i", str(inventory), "--json"], capture_output=True,
                                       text=True, env=env, check=False).stdout)
    targets = [(s["bind"], s["port"], (s["probe"]["check"] or "GET /").split(" ", 1)[1]) for s in report["services"]]

    def ask(target: tuple[str, int, str]) -> None:
        bind, port, path = target
        host = "127.0.0.1" if bind in ("0.0.0.0", "") else "::1" if bind == "::" else bind
        try:
            with socket.create_connection((host, port), timeout=3) as conn:
                conn.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
                conn.recv(4096)  # the status line is all a probe needs before it decides
        except OSError:
            pass  # refused, reset, timed out: the answer a probe reports

    pool = ThreadPoolExecutor(max_workers=max(1, len(targets)))

    def probe_round() -> None:
        list(pool.map(ask, targets))

    refused = sum(1 for s in report["services"] if s["probe"]["detail"] == "connection refused")
    return show, probe_round, f"{len(targets)} service(s), {refused} refusing connections"


def masked_json(text: str) -> object:
    doc = json.loads(text)
    doc["seconds"] = 0
    for s in doc["services"]:
        s["probe"]["latency_ms"] = s["uptime_sec"] = s["memory_bytes"] = 0
    return doc


def masked_text(text: str) -> list[str]:
    return [re.sub(r"\(\d+\.\d+s\)|\d+ms|up \w+|\d+ MiB", "#", line) for line in text.splitlines()]


def same_output(inventory: Path, env: dict[str, str]) -> str:
    """Whether ``labctl status`` from its snapshot prints what the full CLI prints."""
    said = []
    for form, args, masked in (("text", [], masked_text), ("--json", ["--json"], masked_json)):
        out = {}
        for path, extra in (("full", {"LABCTL_NO_SNAPSHOT": "1"}), ("snapshot", {})):
            res = subprocess.run([LABCTL, "status", "-i", str(inventory), *args], capture_output=True, text=True,
                                 env={**env, **extra}, check=False)
            out[path] = (res.returncode, masked(res.stdout))
        said.append(f"{form} {'the same' if out['full'] == out['snapshot'] else 'DIFFERENT'}")
        if out["full"] != out["snapshot"]:
            print(f"status {form}, full:\n{out['full']}\nfrom its snapshot:\n{out['snapshot']}", file=sys.stderr)
    return ", ".join(said)


# The steps of labctl.__main__'s fast path, timed (stderr: a dict of seconds from its start).
PHASES = r"""
import sys, time
t0 = time.perf_counter()
import re  # pip's console script imports it before labctl
from labctl import cmdline
from labctl.host import systemd
from labctl.ops import status
marks = {"imports done": time.perf_counter()}
def timed(name, fn):
    def call(*args, **kwargs):
        result = fn(*args, **kwargs)
        marks[name] = time.perf_counter()
        return result
    return call
def started(name, fn):
    def call(*args, **kwargs):
        marks[name] = time.perf_counter()
        return fn(*args, **kwargs)
    return call
status.read_snapshot = timed("snapshot read and checked intact", status.read_snapshot)
status.snapshot_key = timed("snapshot checked fresh", status.snapshot_key)
systemd.run_cmd = started("systemctl started", systemd.run_cmd)
systemd.UserManager.show = timed("systemctl answered", systemd.UserManager.show)
status.start_all = started("probes started", status.start_all)
opts = cmdline.parse([o for o in cmdline.STATUS if o.snapshot], sys.argv[1:])
report = status.status_from_snapshot(cmdline.find_inventory(opts["inventory"]), probe_timeout=opts["probe_timeout"])
marks["report built"] = time.perf_counter()
from labctl.statustext import status_lines
from labctl.text import terminal_width
sys.stdout.write("".join(line + "\n" for line in status_lines(report, terminal_width())))
sys.stdout.flush()
marks["text printed"] = time.perf_counter()
slowest = max(s.probe["latency_ms"] for s in report.services) / 1000
marks["slowest probe answered (about)"] = marks["probes started"] + slowest
sys.stderr.write(repr({name: at - t0 for name, at in sorted(marks.items(), key=lambda kv: kv[1])}))
"""


def phases(inventory: Path, env: dict[str, str], runs: int) -> dict[str, float]:
    """Medians in ms of the snapshot path's steps over ``runs`` fresh interpreters."""
    out: dict[str, list[float]] = {}
    for _ in range(runs):
        start = time.perf_counter()
        res = subprocess.run([PYTHON, "-c", PHASES, "-i", str(inventory)], capture_output=True, text=True, env=env,
                             check=False)
        wall = time.perf_counter() - start
        got = ast.literal_eval(res.stderr.strip().splitlines()[-1])
        got["interpreter start and exit (the rest)"] = wall - got["text printed"]
        got["wall"] = wall
        for name, value in got.items():
            out.setdefault(name, []).append(value * 1000)
    return {name: statistics.median(values) for name, values in out.items()}


def imports(inventory: Path, env: dict[str, str]) -> tuple[list[tuple[str, float]], dict[str, str]]:
    """What ``labctl status`` from its snapshot imports (``python -X importtime``, the
    bytecode warm): its costliest imports (cumulative ms, top level), and each private
    module (``_socket``...) with the module that imported it."""
    res = subprocess.run([PYTHON, "-X", "importtime", LABCTL, "status", "-i", str(inventory)], capture_output=True,
                         text=True, env=env, check=False)
    rows = []  # (depth, name, cumulative us), each import after the ones it made
    for line in res.stderr.splitlines():
        parts = line.split("|")
        if not line.startswith("import time:") or len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name = parts[2][1:]
        rows.append(((len(name) - len(name.lstrip())) // 2, name.strip(), int(parts[1])))
    top = sorted(((n, us / 1000) for d, n, us in rows if d == 0), key=lambda kv: -kv[1])
    private = {}
    for i, (depth, name, _) in enumerate(rows):
        if name.startswith("_") and name != "__future__":
            private[name] = next((m for d, m, _ in rows[i + 1:] if d < depth), "the interpreter's start")
    return top, private


def on_machine(runs: int) -> int:
    """Boot the CPU demo on a systemd machine (tests/harness/stack.boot_stack, as the system tests
    and bench/model_switch.py do), run this script inside it as labuser with labctl's venv
    and the demo's inventory (every service up), print what it prints, shut down."""
    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo / "tests"))
    import _pytest.outcomes  # tests/harness/stack.py reports a missing tool as a pytest skip or failure
    from harness.stack import HOME, INVENTORY, VENV, boot_stack

    if os.geteuid() != 0:
        print("--machine needs root (it boots a systemd-nspawn machine)", file=sys.stderr)
        return 2
    try:
        stack = boot_stack(f"labctl-startup-{os.getpid()}")
    except _pytest.outcomes.OutcomeException as exc:
        print(f"cannot run: {exc.msg}", file=sys.stderr)
        return 2
    try:
        stack.machine.copy_in(Path(__file__), f"{HOME}/startup.py", owner="labuser")  # type: ignore[attr-defined]
        deadline = time.monotonic() + 300  # LiteLLM's first answers are slow: wait for a healthy status
        while stack.labctl("status", "-i", INVENTORY).rc != 0 and time.monotonic() < deadline:
            time.sleep(2)
        res = stack.run(f"{VENV}/bin/python", f"{HOME}/startup.py", "--runs", str(runs), "--inventory", INVENTORY,
                        check=False, timeout=1800)
        print(f"on a booted systemd machine (nspawn), CPU demo up, as labuser:\n{res.stdout}", end="")
        if res.rc != 0:
            print(res.stderr[-3000:], file=sys.stderr)
        return res.rc
    finally:
        stack.machine.shutdown()  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--inventory", type=Path, help="measure status against this inventory instead")
    parser.add_argument("--as-is", action="store_true", help="keep this environment's bytecode settings")
    parser.add_argument("--machine", action="store_true",
                        help="boot the CPU demo on a systemd machine and measure there (root; under the heavy lock)")
    args = parser.parse_args()
    if args.machine:
        sys.exit(on_machine(args.runs))
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        if not args.as_is:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        inventory = args.inventory or refused_inventory(Path(tmp))
        rows = {
            "python -c pass": run([PYTHON, "-c", "pass"], env),
            "python -c 'import labctl.cli'": run([PYTHON, "-c", "import labctl.cli"], env),
            "labctl --help": run([LABCTL, "--help"], env),
            "labctl version": run([LABCTL, "version"], env),
            "labctl status (full)": run([LABCTL, "status", "-i", str(inventory)], {**env, "LABCTL_NO_SNAPSHOT": "1"}),
            "labctl status (snapshot)": run([LABCTL, "status", "-i", str(inventory)], env),
        }
        for fn in rows.values():
            fn()  # warm the bytecode cache (and the page cache)
        show, probe_round, probed = status_floor(inventory, env)
        if show is not None:
            rows["systemctl --user show"] = show
        times = interleaved(rows, args.runs)
        times["bare probe round"] = timed(probe_round, args.runs)
        same = same_output(inventory, env)
        steps = phases(inventory, env, args.runs)
        top, private = imports(inventory, env)
    med = {name: statistics.median(t) * 1000 for name, t in times.items()}
    floor = {name: med["python -c pass"] for name in ("python -c 'import labctl.cli'", "labctl --help",
                                                     "labctl version")}
    status_floor_ms = med["bare probe round"] + med.get("systemctl --user show", 0.0)
    floor["labctl status (full)"] = floor["labctl status (snapshot)"] = status_floor_ms
    print(f"{PYTHON}: {args.runs} runs per row, median and min in ms; bytecode: "
          f"{'as this environment has it' if args.as_is else 'private cache, warmed'}")
    print(f"status inventory: {args.inventory or 'generated, nothing listening'} ({probed})")
    print(f"{'':34} {'median':>8} {'min':>8}   vs floor")
    for name, t in times.items():
        ratio = f"{med[name] / floor[name]:6.2f}x" if floor.get(name) else ""
        print(f"{name:34} {med[name]:8.1f} {min(t) * 1000:8.1f}   {ratio}")
    parts = "bare probe round" + (" + systemctl --user show" if show is not None else "")
    print(f"status floor = {parts} = {status_floor_ms:.1f} ms"
          + ("" if show is not None else "; no user manager answers here, so systemctl's share is "
             "left out of the floor (status's own call fails fast)"))
    print(f"status from its snapshot prints what the full CLI prints: {same} (times, uptime, memory masked)")
    print("status from its snapshot, step by step (medians, ms from the start of its Python code):")
    for name, ms in steps.items():
        print(f"  {name:48} {ms:6.1f}")
    print("status from its snapshot, its costliest imports (python -X importtime, cumulative ms, one run):")
    print("  " + ", ".join(f"{name} {ms:.1f}" for name, ms in top[:14]))
    print("  private modules, each with the module that imported it: "
          + ", ".join(f"{name} <- {parent}" for name, parent in sorted(private.items())))


if __name__ == "__main__":
    main()
