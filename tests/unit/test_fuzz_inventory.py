"""A fuzzer of inventory *text*: byte-level and line-level mutations of real inventories.

The property tests mutate parsed documents; this one mutates the file itself, so YAML
syntax, indentation, anchors, tags, raw control bytes and truncation are exercised too.
Every mutated file must give exit 0 (and then render) or exit 2 with one
``file:line: path: message`` line per problem and ``{"ok": false, ...}`` under --json:
never a traceback, never "internal error", never more than a second.

The run is deterministic per seed (LABCTL_FUZZ_SEED, default fixed; the seed is in the
test id) so a failure can be replayed; LABCTL_FUZZ_CASES sets the count (default 1200).
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from pathlib import Path

import pytest

from harness.invtext import BASE, VLLM, with_service
from labctl.cli import main

CASES = int(os.environ.get("LABCTL_FUZZ_CASES", "1200"))
SEED = int(os.environ.get("LABCTL_FUZZ_SEED", "20261202"))
REPO = Path(__file__).resolve().parents[2]
CORPUS = [BASE, with_service(VLLM), (REPO / "inventory.yaml").read_text(),
          (REPO / "examples/cpu-demo/inventory.yaml").read_text()]
ERROR_LINE = re.compile(r"^.+:\d+: \S.*: .+$")

TOKENS = ["\n", "\r", "\r\n", "\x00", "\x0b", "\x0c", "\x1b[2J", "\x7f", "\u0085", "\u2028", "\u2029", "\u202e",
          "\ufeff", "\t", " ", "  ", "%h", "%Z", "%%", "$HOME", "\\", "\\\n", '"', "'", ";", "#", "[", "]", "{", "}",
          ": ", ":", ",", "- ", "? ", "&a ", "*a", "&a [*a]", "<<: *a", "!!binary ", "!!python/object:os.system ",
          "!!timestamp ", "2001-13-45", "9" * 5000, "1e999", "0x1F", "0o17", ".inf", "~", "null", "yes", "on",
          "---\n", "...\n", "%YAML 1.1\n", "\"\\ud800\"", "\"\\x00\"", "\"\\r\"", "os.environ/LITELLM_MASTER_KEY",
          "::1%eth0", "0.0.0.0", "sk-abcdefghijklmnopqrst", "Bearer abcdefghijkl", "https://u:p@h/x",
          "[" * 200, "{" * 200, "- " * 100, "x: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n", "é", "😀", "\udcff"]


def mutate(text: str, rng: random.Random) -> str:
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(9)
        lines = text.splitlines(keepends=True) or [""]
        if op == 0:  # insert a token at a random offset
            i = rng.randrange(len(text) + 1)
            text = text[:i] + rng.choice(TOKENS) + text[i:]
        elif op == 1:  # replace a value (after ': ') with a token
            candidates = [i for i, line in enumerate(lines) if ": " in line]
            if candidates:
                i = rng.choice(candidates)
                key = lines[i].split(": ", 1)[0]
                lines[i] = f"{key}: {rng.choice(TOKENS)}\n"
                text = "".join(lines)
        elif op == 2:  # delete a line
            del lines[rng.randrange(len(lines))]
            text = "".join(lines)
        elif op == 3:  # duplicate a line
            i = rng.randrange(len(lines))
            lines.insert(i, lines[i])
            text = "".join(lines)
        elif op == 4:  # re-indent a line
            i = rng.randrange(len(lines))
            lines[i] = " " * rng.choice([0, 1, 2, 3, 4, 6, 8]) + lines[i].lstrip(" ")
            text = "".join(lines)
        elif op == 5:  # flip a byte
            data = bytearray(text.encode("utf-8", "surrogatepass"))
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            text = data.decode("utf-8", "replace")
        elif op == 6:  # truncate
            text = text[:rng.randrange(len(text) + 1)]
        elif op == 7:  # swap two lines
            if len(lines) > 1:
                a, b = rng.randrange(len(lines)), rng.randrange(len(lines))
                lines[a], lines[b] = lines[b], lines[a]
                text = "".join(lines)
        else:  # anchor a mapping and alias it elsewhere
            i = rng.randrange(len(lines))
            lines[i] = lines[i].replace(": ", ": &a ", 1)
            j = rng.randrange(len(lines))
            lines.insert(j, lines[j].split(":", 1)[0] + ": *a\n" if ":" in lines[j] else "- *a\n")
            text = "".join(lines)
    return text


def test_fuzzed_inventories_never_crash(tmp_path: Path, capsys) -> None:
    rng = random.Random(SEED)
    outcomes = {0: 0, 2: 0}
    slowest = 0.0
    for n in range(CASES):
        text = mutate(rng.choice(CORPUS), rng)
        path = tmp_path / f"case{n % 50}" / "inventory.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(text.encode("utf-8", "surrogateescape" if "\udcff" in text else "surrogatepass"))
        start = time.monotonic()
        with pytest.raises(SystemExit) as exit_info:
            main(["validate", "-i", str(path), "--json"])
        slowest = max(slowest, time.monotonic() - start)
        out, err = capsys.readouterr()
        where = f"case {n} (seed {SEED}):\n{text[:400]!r}\n{err}"
        code = exit_info.value.code
        assert code in (0, 2), where
        assert "Traceback" not in out + err and "internal error" not in out + err, where
        doc = json.loads(out)
        assert doc["ok"] is (code == 0), where
        if code == 2:
            assert doc["errors"] and all({"file", "line", "path", "message"} <= set(e) for e in doc["errors"]), where
            lines = err.splitlines()
            assert lines and all(ERROR_LINE.match(line) for line in lines), where
        else:
            with pytest.raises(SystemExit) as render_exit:
                main(["render", "-i", str(path), "--out", str(path.parent / "out")])
            rendered = capsys.readouterr()
            assert render_exit.value.code == 0, where + rendered.err
        outcomes[code] += 1
    # The fuzzer must reach both sides, or its mutations are too weak or too strong.
    assert outcomes[0] >= CASES // 50 and outcomes[2] >= CASES // 2, outcomes
    assert slowest < 1.0, f"slowest case took {slowest:.2f}s"
