"""labctl's GGUF header walk against gguf.GGUFReader (ground truth) and corrupt files."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from labctl.host import gguf_header
from labctl.host.gguf_writer import write_tiny_gguf


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("m") / "tiny.gguf")


def test_matches_gguf_reader(tiny: Path) -> None:
    info = gguf_header.read(tiny)
    reader = gguf.GGUFReader(tiny)
    assert info.tensor_count == len(reader.tensors)
    assert info.architecture == "llama"
    assert info.context_length == int(reader.get_field("llama.context_length").contents())
    assert info.block_count == int(reader.get_field("llama.block_count").contents())
    end = max(t.data_offset + int(t.n_bytes) for t in reader.tensors)
    assert end == info.size  # the walk sized every tensor exactly: nothing left over


@pytest.mark.parametrize("mutate,message", [
    (lambda b: b[: len(b) // 2], "truncated: tensor data needs"),
    (lambda b: b[:200], "truncated or corrupt header: 21 tensors, 21 metadata keys cannot fit in the 176 bytes"),
    (lambda b: b[:30], "truncated or corrupt header: 21 tensors, 21 metadata keys cannot fit in the 6 bytes"),
    (lambda b: b[:8] + bytes(8) + (1).to_bytes(8, "little") + b[24:40],
     "truncated or corrupt header: a 20-byte string at byte 32 runs past the end"),
    # The first bytes are never echoed: through a symlink they may be another file's secret.
    (lambda b: b"hello, I am a text file\n" * 10, "not a GGUF file (no GGUF magic)"),
    (lambda b: b"GGUF" + (9).to_bytes(4, "little") + b[8:], "unsupported GGUF version 9"),
    (lambda b: b[:8] + (2**40).to_bytes(8, "little") + b[16:], "corrupt header: 1099511627776 tensors"),
    (lambda b: b"", "not a GGUF file (0 bytes)"),
])
def test_refuses_bad_files(tiny: Path, tmp_path: Path, mutate, message: str) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(mutate(tiny.read_bytes()))
    with pytest.raises(gguf_header.GGUFError) as err:
        gguf_header.read(bad)
    assert str(err.value).startswith(message)


def test_directory_missing_and_dangling(tmp_path: Path) -> None:
    assert gguf_header.problem(tmp_path) == "is a directory, not a GGUF file"
    assert gguf_header.problem(tmp_path / "nope.gguf") == "does not exist"
    (tmp_path / "dangling.gguf").symlink_to(tmp_path / "gone.gguf")
    assert gguf_header.problem(tmp_path / "dangling.gguf") == "does not exist (dangling symlink)"
