"""The GGUF header walk against hostile files: every one is refused within a second with a
one-line GGUFError, never a hang, a traceback or a giant loop. Special files (FIFO,
device, socket, links) and crafted headers are made under tmp_path; huge counts are
claimed in a few bytes, or backed by a sparse file, never written out."""

from __future__ import annotations

import os
import random
import socket
import struct
import time
from pathlib import Path

import pytest
from harness.helpers import timed

from labctl.host import gguf_header
from labctl.host.gguf_header import GGUFError
from labctl.host.gguf_writer import write_tiny_gguf

# GGUF value types (gguf.GGUFValueType)
U8, U32, I32, F32, BOOL, STRING, ARRAY, U64 = 0, 4, 5, 6, 7, 8, 9, 10
BOUND = 1.0  # seconds any refusal may take


def s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv(key: str, kind: int, payload: bytes) -> bytes:
    return s(key) + struct.pack("<I", kind) + payload


ARCH = kv("general.architecture", STRING, s("llama"))


def gguf(kvs: list[bytes], tensors: list[bytes] = (), *, kv_count: int | None = None,  # type: ignore[assignment]
         tensor_count: int | None = None, version: int = 3, pad: int = 0, align: int = 32) -> bytes:
    """A GGUF header, padded to ``align`` (where its data section would start), plus ``pad``
    zero bytes."""
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors) if tensor_count is None else tensor_count,
                                 len(kvs) if kv_count is None else kv_count)
    data = head + b"".join(kvs) + b"".join(tensors)
    return data + bytes(-len(data) % align + pad)


def tensor(name: str, dims: list[int], kind: int = 0, offset: int = 0, n_dims: int | None = None) -> bytes:
    return (s(name) + struct.pack("<I", len(dims) if n_dims is None else n_dims)
            + b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", kind, offset))


def refused(path: Path) -> str:
    """The one-line GGUFError read() gives for ``path``, within the bound."""
    with pytest.raises(GGUFError) as err:
        timed(lambda: gguf_header.read(path))
    message = str(err.value)
    assert message and "\n" not in message and "\r" not in message
    assert "Errno" not in message and "Traceback" not in message
    return message


def write(tmp_path: Path, data: bytes, name: str = "x.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- special files ---------------------------------------------------------------------


def test_fifo_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "x.gguf"
    os.mkfifo(fifo)
    assert refused(fifo) == "is a FIFO, not a regular file"
    assert gguf_header.problem(fifo) == "is a FIFO, not a regular file"


def test_fifo_with_a_writer_is_still_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "x.gguf"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(writer, b"GGUF" + bytes(60))
        assert refused(fifo) == "is a FIFO, not a regular file"
    finally:
        os.close(writer)
        os.close(reader)


@pytest.mark.parametrize("device,kind", [("/dev/zero", "a character device"), ("/dev/null", "a character device"),
                                         ("/dev/urandom", "a character device")])
def test_device_behind_a_symlink(tmp_path: Path, device: str, kind: str) -> None:
    if not os.path.exists(device):
        pytest.skip(f"no {device} here")
    link = tmp_path / "x.gguf"
    link.symlink_to(device)
    assert refused(link) == f"is {kind}, not a regular file"


@pytest.mark.parametrize("target", ["/proc/self/environ", "/proc/self/status", "/sys/kernel/mm/transparent_hugepage/enabled",
                                    "/proc/kcore"])
def test_kernel_files_are_never_read(tmp_path: Path, target: str) -> None:
    """Regular files to stat, kernel interfaces to read (environ holds secrets; some /sys
    files map device memory)."""
    if not os.path.exists(target):
        pytest.skip(f"no {target} here")
    link = tmp_path / "x.gguf"
    link.symlink_to(target)
    assert refused(link) == f"is a kernel file under /{target.split('/')[1]}, not a GGUF file"


def test_socket(tmp_path: Path) -> None:
    path = tmp_path / "s.gguf"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(str(path))
        except OSError as exc:
            pytest.skip(f"cannot bind a unix socket here: {exc}")
        assert refused(path) == "is a socket, not a regular file"


def test_symlink_loops(tmp_path: Path) -> None:
    (tmp_path / "a.gguf").symlink_to(tmp_path / "b.gguf")
    (tmp_path / "b.gguf").symlink_to(tmp_path / "a.gguf")
    (tmp_path / "self.gguf").symlink_to("self.gguf")
    for name in ("a.gguf", "self.gguf"):
        assert "symbolic links" in refused(tmp_path / name)


@pytest.mark.parametrize("make,expected", [
    (lambda p: (p / "file.gguf").write_bytes(b"x") and p / "file.gguf" / "x.gguf", "Not a directory"),
    (lambda p: p / ("n" * 300 + ".gguf"), "File name too long"),
    (lambda p: p / "missing" / "x.gguf", "does not exist"),
    (lambda p: (p / "gone.gguf").symlink_to(p / "nowhere") or p / "gone.gguf", "does not exist (dangling symlink)"),
    (lambda p: Path(str(p) + "/bad\0name.gguf"), "is not a valid path"),
])
def test_os_errors_are_one_line(tmp_path: Path, make, expected: str) -> None:
    assert expected in refused(make(tmp_path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable(tmp_path: Path) -> None:
    path = write(tmp_path, gguf([ARCH]))
    path.chmod(0)
    assert refused(path) == "is not readable (permission denied)"


def test_text_file_is_not_echoed(tmp_path: Path) -> None:
    """A link to /etc/shadow once had its first bytes printed back."""
    secret = b"root:$6$s3cr3t$hash:19000:0:99999:7:::\n"
    message = refused(write(tmp_path, secret * 4, "shadow.gguf"))
    assert message == "not a GGUF file (no GGUF magic)"
    for piece in (b"root", b"s3cr3t", b"$6$"):
        assert piece.decode() not in message


def test_too_short(tmp_path: Path) -> None:
    assert refused(write(tmp_path, b"GGUF")) == "not a GGUF file (4 bytes)"


# --- counts claimed by the header --------------------------------------------------------


HUGE = [2**60, 2**63, 2**64 - 1]


@pytest.mark.parametrize("count", HUGE)
def test_huge_string_array(tmp_path: Path, count: int) -> None:
    data = gguf([ARCH, kv("tokenizer.ggml.tokens", ARRAY, struct.pack("<IQ", STRING, count) + s("a"))])
    assert refused(write(tmp_path, data)).startswith("corrupt header: an array of")


@pytest.mark.parametrize("item", [U8, U32, U64, F32, BOOL])
@pytest.mark.parametrize("count", HUGE)
def test_huge_scalar_array(tmp_path: Path, item: int, count: int) -> None:
    data = gguf([ARCH, kv("tokenizer.ggml.scores", ARRAY, struct.pack("<IQ", item, count))], pad=64)
    assert refused(write(tmp_path, data)).startswith("corrupt header: an array of")


def test_scalar_array_one_item_too_many(tmp_path: Path) -> None:
    items = struct.pack("<4I", 1, 2, 3, 4)
    unaligned = kv("general.alignment", U32, struct.pack("<I", 1))  # no padding after the header
    ok = gguf([ARCH, unaligned, kv("a", ARRAY, struct.pack("<IQ", U32, 4) + items)], align=1)
    assert timed(lambda: gguf_header.read(write(tmp_path, ok))).architecture == "llama"  # type: ignore[union-attr]
    bad = gguf([ARCH, unaligned, kv("a", ARRAY, struct.pack("<IQ", U32, 5) + items)], align=1)
    assert refused(write(tmp_path, bad)).startswith("corrupt header: an array of 5 items")


def test_nested_and_unknown_array_types(tmp_path: Path) -> None:
    nested = gguf([ARCH, kv("a", ARRAY, struct.pack("<IQ", ARRAY, 2**40))])
    assert refused(write(tmp_path, nested)) == "corrupt header: array of unsupported type 9"
    unknown = gguf([ARCH, kv("a", 99, b"")], pad=16)
    assert refused(write(tmp_path, unknown)).startswith("corrupt header: unknown value type 99")


@pytest.mark.parametrize("length", [2**32, 2**60, 2**64 - 1])
def test_huge_string_lengths(tmp_path: Path, length: int) -> None:
    key = struct.pack("<Q", length) + b"general.name"
    assert "runs past the end" in refused(write(tmp_path, gguf([key], pad=64)))
    value = kv("general.name", STRING, struct.pack("<Q", length) + b"x" * 32)
    assert "runs past the end" in refused(write(tmp_path, gguf([ARCH, value])))


@pytest.mark.parametrize("count", [2**24, 2**40, 2**60, 2**64 - 1])
def test_huge_kv_count(tmp_path: Path, count: int) -> None:
    assert "metadata keys" in refused(write(tmp_path, gguf([ARCH], kv_count=count, pad=256)))


@pytest.mark.parametrize("count", [2**24, 2**40, 2**60, 2**64 - 1])
def test_huge_tensor_count(tmp_path: Path, count: int) -> None:
    assert f"{count} tensors" in refused(write(tmp_path, gguf([ARCH], tensor_count=count, pad=256)))


def test_counts_that_do_not_fit_the_file(tmp_path: Path) -> None:
    """Small enough for the caps, too many for the bytes there: refused before looping."""
    message = refused(write(tmp_path, gguf([ARCH], kv_count=1000, pad=64)))
    assert message.startswith("truncated or corrupt header: 0 tensors, 1000 metadata keys cannot fit")
    message = refused(write(tmp_path, gguf([ARCH], tensor_count=1000, pad=64)))
    assert message.startswith("truncated or corrupt header: 1000 tensors, 1 metadata keys cannot fit")


@pytest.mark.parametrize("head", [
    gguf([ARCH], kv_count=(1 << 14) + 1),
    gguf([ARCH], tensor_count=(1 << 18) + 1),
    gguf([ARCH, kv("tokenizer.ggml.tokens", ARRAY, struct.pack("<IQ", STRING, (1 << 20) + 1))]),
], ids=["keys", "tensors", "strings"])
def test_sparse_file_cannot_buy_a_long_walk(tmp_path: Path, head: bytes) -> None:
    """A sparse file has room for any count that fits its size; the caps still bound the walk."""
    path = write(tmp_path, head)
    with path.open("r+b") as fh:
        fh.truncate(1 << 30)  # 1 GiB of zeros, no blocks written
    assert "corrupt header" in refused(path)


@pytest.mark.parametrize("n_dims", [9, 64, 2**31, 2**32 - 1])
def test_absurd_n_dims(tmp_path: Path, n_dims: int) -> None:
    data = gguf([ARCH], [tensor("w", [1], n_dims=n_dims)], pad=64)
    assert refused(write(tmp_path, data)).startswith("truncated or corrupt header: tensor #0 has")


@pytest.mark.parametrize("dims", [[2**63, 2**63, 2**63, 2**63], [2**64 - 1] * 8, [2**32, 2**32], [1 << 40]])
def test_absurd_dims_are_not_computed_into_loops(tmp_path: Path, dims: list[int]) -> None:
    data = gguf([ARCH], [tensor("w", dims, n_dims=len(dims))], pad=64)
    assert refused(write(tmp_path, data)).startswith("truncated: tensor data needs")


@pytest.mark.parametrize("offset", [2**40, 2**64 - 1])
def test_tensor_offset_past_the_end(tmp_path: Path, offset: int) -> None:
    data = gguf([ARCH], [tensor("w", [4], offset=offset)], pad=64)
    assert refused(write(tmp_path, data)).startswith("truncated: tensor data needs")


def test_unknown_tensor_type_names_no_file_text(tmp_path: Path) -> None:
    data = gguf([ARCH], [tensor("\x1b[2Jevil", [4], kind=999)], pad=64)
    message = refused(write(tmp_path, data))
    assert message == "corrupt header: tensor #0 has unknown type 999"


# --- general.alignment ---------------------------------------------------------------------


@pytest.mark.parametrize("kind,payload,what", [
    (STRING, s("32"), "is a string, not an integer"),
    (BOOL, b"\x01", "is a bool, not an integer"),
    (BOOL, b"\x00", "is a bool, not an integer"),
    (F32, struct.pack("<f", 32.0), "is float, not an integer"),
    (ARRAY, struct.pack("<IQ", U32, 1) + struct.pack("<I", 32), "is an array, not an integer"),
    (U32, struct.pack("<I", 0), "0 is not a power of two"),
    (U32, struct.pack("<I", 3), "3 is not a power of two"),
    (U32, struct.pack("<I", 48), "48 is not a power of two"),
    (I32, struct.pack("<i", -32), "-32 is not a power of two"),
    (U64, struct.pack("<Q", 1 << 40), "1099511627776 is not a power of two"),
    (U32, struct.pack("<I", 2**32 - 1), "4294967295 is not a power of two"),
])
def test_bad_alignment(tmp_path: Path, kind: int, payload: bytes, what: str) -> None:
    data = gguf([ARCH, kv("general.alignment", kind, payload)], pad=64)
    assert refused(write(tmp_path, data)).startswith(f"corrupt header: general.alignment {what}")


@pytest.mark.parametrize("alignment", [1, 8, 32, 4096])
def test_good_alignment(tmp_path: Path, alignment: int) -> None:
    data = gguf([ARCH, kv("general.alignment", U32, struct.pack("<I", alignment))], align=alignment)
    info = timed(lambda: gguf_header.read(write(tmp_path, data)))
    assert info.architecture == "llama"  # type: ignore[union-attr]


# --- metadata kept as data; odd scalar types -------------------------------------------------


def test_strings_from_the_file_stay_as_data(tmp_path: Path) -> None:
    name = "\x1b[2J[red]x[/red]\u202e\u2028"
    path = write_tiny_gguf(tmp_path / "evil.gguf", name=name)
    info = timed(lambda: gguf_header.read(path))
    assert info.name == name  # type: ignore[union-attr]  # escaped by the CLI when printed, not here


def test_context_and_blocks_must_be_plain_positive_ints(tmp_path: Path) -> None:
    data = gguf([ARCH, kv("llama.context_length", BOOL, b"\x01"), kv("llama.block_count", I32, struct.pack("<i", -3)),
                 kv("general.file_type", ARRAY, struct.pack("<IQ", U8, 0))], pad=8)
    info = timed(lambda: gguf_header.read(write(tmp_path, data)))
    assert (info.context_length, info.block_count, info.quantization) == (None, None, None)  # type: ignore[union-attr]


def test_architecture_must_be_a_string(tmp_path: Path) -> None:
    data = gguf([kv("general.architecture", U32, struct.pack("<I", 7))], pad=8)
    assert refused(write(tmp_path, data)) == "metadata has no general.architecture"


def test_a_huge_string_value_is_skipped_not_decoded(tmp_path: Path) -> None:
    template = kv("tokenizer.chat_template", STRING, s("x" * (1 << 17)))
    info = timed(lambda: gguf_header.read(write(tmp_path, gguf([ARCH, template]))))
    assert info.architecture == "llama"  # type: ignore[union-attr]


# --- any mutation of a real header: parsed or refused, quickly -------------------------------


@pytest.fixture(scope="module")
def tiny_bytes(tmp_path_factory) -> bytes:
    return write_tiny_gguf(tmp_path_factory.mktemp("m") / "tiny.gguf").read_bytes()


def test_every_truncation_of_the_header(tmp_path: Path, tiny_bytes: bytes) -> None:
    path = tmp_path / "cut.gguf"
    start = time.monotonic()
    for end in range(0, 1600, 3):
        path.write_bytes(tiny_bytes[:end])
        with pytest.raises(GGUFError) as err:
            gguf_header.read(path)
        assert "\n" not in str(err.value)
    assert time.monotonic() - start < 10


def test_random_header_corruption(tmp_path: Path, tiny_bytes: bytes) -> None:
    """Overwrite header bytes with hostile values (0xff runs, huge u64s, zeros): every
    result is a GGUFInfo or a one-line GGUFError, each within the bound."""
    rng = random.Random(1234)
    path = tmp_path / "mutant.gguf"
    patterns = [b"\xff" * 8, b"\x00" * 8, struct.pack("<Q", 2**63), struct.pack("<I", 2**32 - 1), b"\x09\x00\x00\x00"]
    for _ in range(150):
        data = bytearray(tiny_bytes)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(4, 1500)
            data[at:at + 8] = rng.choice(patterns)
        path.write_bytes(bytes(data))

        def attempt() -> object:
            try:
                return gguf_header.read(path)
            except GGUFError as exc:
                assert "\n" not in str(exc)
                return exc

        timed(attempt)
