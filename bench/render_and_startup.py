"""Render an inventory of 200 services, and time `labctl --help` start-up.

    .venv/bin/python bench/render_and_startup.py [--services 200] [--runs 5]

Prints figures; asserts nothing (performance claims live here, not in timed tests).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from labctl.load import load_inventory
from labctl.render import render_all


def inventory(n: int) -> str:
    lines = ["version: 1", "host: {user: llm, gpu: false}", "services:"]
    backends = n - 1
    for i in range(backends):
        if i % 2:
            lines += [f"  ls{i}:", "    kind: llama-server", "    binary: /opt/llama/bin/llama-server",
                      f"    port: {10000 + i}", f"    alias: ls{i}", "    n_gpu_layers: 0"]
        else:
            lines += [f"  py{i}:", "    kind: llama-cpp-python", "    runtime: {python: /opt/lcp/bin/python}",
                      f"    port: {10000 + i}", f"    alias: py{i}", "    n_gpu_layers: 0"]
    lines += ["  gateway:", "    kind: litellm", "    runtime: {python: /opt/litellm/bin/python}", "    port: 4000",
              "    routes:"]
    names = [f"ls{i}" if i % 2 else f"py{i}" for i in range(backends)]
    lines += [f"      - {{name: {name}, service: {name}}}" for name in names]
    lines += ["    fallbacks:"] + [f"      {a}: [{b}]" for a, b in zip(names[::2], names[1::2])]
    return "\n".join(lines) + "\n"


def timed(fn, runs: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "inventory.yaml"
        path.write_text(inventory(args.services))
        load = timed(lambda: load_inventory(path), args.runs)
        inv = load_inventory(path).inventory
        render = timed(lambda: render_all(inv), args.runs)
        files = render_all(inv)
        cli = timed(lambda: subprocess.run([sys.executable, "-m", "labctl", "validate", "-i", str(path)],
                                           check=True, capture_output=True), args.runs)
    helps = timed(lambda: subprocess.run([sys.executable, "-m", "labctl", "--help"], check=True,
                                         capture_output=True), args.runs)
    baseline = timed(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), args.runs)
    med = statistics.median
    print(f"inventory: {args.services} services, {len(files)} rendered files, {args.runs} runs each (median)")
    print(f"load + validate + cross-check: {med(load) * 1000:8.1f} ms")
    print(f"render every file:             {med(render) * 1000:8.1f} ms  ({med(render) / len(files) * 1e6:.0f} us/file)")
    print(f"`labctl validate` end to end:  {med(cli) * 1000:8.1f} ms")
    print(f"`labctl --help` start-up:      {med(helps) * 1000:8.1f} ms  (bare python start-up {med(baseline) * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
