"""`labctl status` with one backend hung (accepts connections, never answers).

Probes run concurrently, each bounded by --probe-timeout, so status should return within
about one timeout, however many backends hang. The other backend is a real llama-server
serving a tiny GGUF. Prints the elapsed time as a ratio of the probe timeout.

    .venv/bin/python bench/status_hung_backend.py [--timeouts 1 2 5]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx

from labctl.host.gguf_writer import write_tiny_gguf
from labctl.load import load_inventory
from labctl.ops.status import gather

TOOLS = Path(os.environ.get("LABCTL_TOOLS", "/opt/labctl-tools"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hung_server(port: int, stop: threading.Event) -> None:
    """Accept and hold every connection, answering nothing: a wedged backend."""
    held = []
    with socket.socket() as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", port))
        srv.listen(64)
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except TimeoutError:
                continue
    for conn in held:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--timeouts", type=float, nargs="+", default=[1.0, 2.0, 5.0])
    parser.add_argument("--hung", type=int, default=3, help="how many hung backends")
    args = parser.parse_args()
    stop = threading.Event()
    with tempfile.TemporaryDirectory() as tmp:
        model = write_tiny_gguf(Path(tmp) / "tiny.gguf")
        native = free_port()
        hung = [free_port() for _ in range(args.hung)]
        for port in hung:
            threading.Thread(target=hung_server, args=(port, stop), daemon=True).start()
        server = subprocess.Popen([str(TOOLS / "llama-server/bin/llama-server"), "--model", str(model), "--alias",
                                   "native", "--host", "127.0.0.1", "--port", str(native), "--ctx-size", "256"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(200):
                try:
                    if httpx.get(f"http://127.0.0.1:{native}/health", trust_env=False, timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            text = ["version: 1", f"host: {{user: llm, gpu: false, home: {tmp}}}", "services:",
                    "  native: {kind: llama-server, binary: /bin/true, alias: native, n_gpu_layers: 0, "
                    f"port: {native}}}"]
            text += [f"  hung{i}: {{kind: llama-server, binary: /bin/true, alias: h{i}, n_gpu_layers: 0, port: {p}}}"
                     for i, p in enumerate(hung)]
            inv = load_inventory("bench.yaml", text="\n".join(text) + "\nmonitoring: {enabled: false}\n").inventory
            print(f"{args.hung} hung backend(s) + 1 real llama-server; probes concurrent")
            for timeout in args.timeouts:
                t = time.perf_counter()
                report = gather(inv, probe_timeout=timeout, with_monitoring=False)
                elapsed = time.perf_counter() - t
                states = ", ".join(f"{s.service}={'ok' if s.probe['ok'] else s.probe['detail']}" for s in report.services)
                print(f"probe timeout {timeout:4.1f}s: status took {elapsed:6.2f}s, ratio {elapsed / timeout:4.2f} "
                      f"(target <= 1.30)  [{states}]")
        finally:
            stop.set()
            server.terminate()
            server.wait(timeout=10)


if __name__ == "__main__":
    main()
