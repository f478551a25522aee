"""Facts about a GGUF file from its header, never loading the weights.

The header is walked once through a memory map: scalar metadata is kept, arrays (a
tokenizer's vocabulary) are skipped, and each tensor's descriptor is sized with the gguf
package's type tables to prove the data section is complete. ``gguf.GGUFReader`` would
give the same facts but builds an object per vocabulary entry: 13 s for a 270M Gemma
header on these machines, against milliseconds here (bench/gguf_header.py).

The file is hostile until proven otherwise (a models dir is writable by whoever drops a
model in it): only a regular file is opened, without blocking (a FIFO or a device named
``x.gguf`` is refused by its type, never read); every count in the header is checked
against the bytes left in the file *before* anything loops over it or multiplies by it;
and every failure, whatever raised it, comes out of :func:`read` as one-line
:class:`GGUFError`. Strings are kept as the file spells them: they are data, and the CLI
escapes them when it prints them (:func:`labctl.text.shown`).
"""

from __future__ import annotations

import errno
import functools
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labctl import fsio

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)


class GGUFError(Exception):
    """The file is not a GGUF labctl can serve; the message is one line for the operator."""


@dataclass(frozen=True)
class GGUFInfo:
    path: Path
    size: int
    version: int
    architecture: str
    name: str | None
    context_length: int | None
    quantization: str | None
    tensor_count: int
    block_count: int | None = None
    # Bytes of KV cache one token of context takes over all layers, at f16 (llama.cpp's
    # default cache type): 2 bytes x (K + V widths) x layers. None when the header lacks
    # the attention shape.
    kv_bytes_per_token: int | None = None
    # The tensor data's bytes: what llama.cpp maps as the model buffer (the file less its
    # header and metadata).
    tensor_bytes: int | None = None

    def as_dict(self) -> dict[str, object]:
        return {"path": str(self.path), "size": self.size, "version": self.version,
                "architecture": self.architecture, "name": self.name,
                "context_length": self.context_length, "quantization": self.quantization,
                "tensor_count": self.tensor_count, "block_count": self.block_count,
                "kv_bytes_per_token": self.kv_bytes_per_token, "tensor_bytes": self.tensor_bytes}


# What else a parser over hostile bytes can raise; read() turns each into a GGUFError.
_PARSE_ERRORS = (ValueError, TypeError, OverflowError, RecursionError, MemoryError, struct.error,
                 ArithmeticError, LookupError, BufferError)


def read(path: Path) -> GGUFInfo:
    """The header's facts, or GGUFError (one line) for anything else: never blocks, never
    raises OSError & co."""
    try:
        path = Path(path)
        fd = _open_regular(path)
        try:
            size = os.fstat(fd).st_size
            if size < 8:
                raise GGUFError(f"not a GGUF file ({size} bytes)")
            with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as buf:
                return _parse(path, buf, size)
        finally:
            os.close(fd)
    except GGUFError:
        raise
    except OSError as exc:
        raise GGUFError(_os_problem(exc)) from None
    except _PARSE_ERRORS as exc:
        raise GGUFError(f"corrupt header ({type(exc).__name__})") from None


_KERNEL_TREES = ("/proc", "/sys")


@functools.lru_cache(maxsize=None)
def _device_of(root: str) -> int | None:
    """The st_dev of procfs or sysfs, to know their files even through a bind mount."""
    try:
        return os.stat(root).st_dev
    except OSError:
        return None


def not_regular(mode: int) -> str | None:
    """None for a regular file, else why it is refused: "is a FIFO, not a regular file"."""
    kind = fsio.file_kind(mode)
    if kind is None:
        return None
    if kind == "a directory":
        return "is a directory, not a GGUF file"
    return f"is {kind}, not a regular file"


def _open_regular(path: Path) -> int:
    """A read-only descriptor on ``path`` if (after following links) it is a regular file.

    The type (and place: not procfs or sysfs) is checked before the open, so a device is
    never opened (opening some has side effects), and the descriptor must be that same
    file, in case the name was swapped in between; O_NONBLOCK makes even such a racing
    open of a FIFO return at once."""
    try:
        before = os.stat(path)
    except OSError as exc:
        raise GGUFError(_os_problem(exc, path)) from None
    except ValueError:  # an embedded NUL byte
        raise GGUFError("is not a valid path") from None
    reason = not_regular(before.st_mode)
    if reason:
        raise GGUFError(reason)
    real = os.path.realpath(path)
    for root in _KERNEL_TREES:
        if real == root or real.startswith(root + "/") or before.st_dev == _device_of(root):
            # "Regular" files there are kernel interfaces (some map device memory), never models.
            raise GGUFError(f"is a kernel file under {root}, not a GGUF file")
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise GGUFError(_os_problem(exc, path)) from None
    try:
        after = os.fstat(fd)
        reason = not_regular(after.st_mode)
        if reason:
            raise GGUFError(reason)
        if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
            raise GGUFError("was replaced while being opened; try again")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _os_problem(exc: OSError, path: Path | None = None) -> str:
    """One line for an OSError: the errno's own text (os.strerror), never the repr, which
    would repeat the path (and whatever bytes it holds)."""
    code = exc.errno
    if code == errno.ENOENT:
        dangling = path is not None and os.path.islink(path)
        return "does not exist" + (" (dangling symlink)" if dangling else "")
    if code in (errno.EACCES, errno.EPERM):
        return "is not readable (permission denied)"
    if code == errno.EISDIR:
        return "is a directory, not a GGUF file"
    if code == errno.ELOOP:
        return "cannot be opened: too many levels of symbolic links (a symlink loop?)"
    if code is None:
        return f"cannot be read ({type(exc).__name__})"
    try:
        text = os.strerror(code)
    except (ValueError, OverflowError):
        text = f"errno {code}"
    return f"cannot be read: {text}"


# Sizes of GGUF's fixed-size metadata value types (gguf.GGUFValueType).
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_WIDTH = {kind: struct.calcsize(fmt) for kind, fmt in _SCALAR.items()}
_STRING, _ARRAY = 8, 9
# The fewest bytes one item can take: a string is its 8-byte length; a key/value pair is a
# key, a 4-byte type and a 1-byte value; a tensor is a name, n_dims, type and offset.
_MIN_STRING = 8
_MIN_KV = _MIN_STRING + 4 + 1
_MIN_TENSOR = _MIN_STRING + 4 + 4 + 8
_MAX_DIMS = 8  # GGML_MAX_DIMS is 4; a little slack, never a loop the file chooses
# Counts a real model never reaches. They bound the walk's time even on a huge (or sparse)
# file where the byte checks alone would allow millions of iterations: a vocabulary is
# ~10^5 strings (tokens plus merges under 10^6), metadata ~10^2 keys, tensors ~10^4.
_MAX_KV = 1 << 14
_MAX_TENSORS = 1 << 18
_MAX_ARRAY_STRINGS = 1 << 20  # all string-array items in the header together
_MAX_KEY = 1 << 16  # GGUF's limit for a key; tensor names are far shorter still
_MAX_KEPT_STRING = 1 << 16  # a longer string value (a chat template) is skipped, not decoded
_MAX_KEPT_TOTAL = 1 << 24  # bytes of keys and string values decoded from one header
_MAX_ALIGNMENT = 1 << 16


class _Cursor:
    """Reads GGUF's little-endian values from a memory map, bounds-checked."""

    def __init__(self, buf: mmap.mmap, size: int) -> None:
        self.buf, self.size, self.pos = buf, size, 0
        self.strings_left = _MAX_ARRAY_STRINGS
        self.kept_left = _MAX_KEPT_TOTAL

    @property
    def left(self) -> int:
        return self.size - self.pos

    def unpack(self, fmt: str) -> Any:
        width = struct.calcsize(fmt)
        if self.pos + width > self.size:
            raise GGUFError(f"truncated header at byte {self.pos}")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += width
        return value

    def length(self) -> int:
        """A string's length, checked against the bytes left."""
        length = self.unpack("<Q")
        if length > self.left:
            raise GGUFError(f"truncated or corrupt header: a {length}-byte string at byte {self.pos} "
                            "runs past the end")
        return length

    def take(self, length: int) -> str:
        raw = self.buf[self.pos:self.pos + length]
        self.pos += length
        self.kept_left -= length
        return raw.decode("utf-8", errors="replace")

    def key(self) -> str:
        length = self.length()
        if length > _MAX_KEY or length > self.kept_left:
            raise GGUFError(f"corrupt header: a {length}-byte key at byte {self.pos}")
        return self.take(length)

    def skip_strings(self, count: int) -> None:
        """``count`` strings, skipped in a tight loop (a vocabulary is 10^5 of them)."""
        if count * _MIN_STRING > self.left:
            raise GGUFError(f"corrupt header: an array of {count} strings at byte {self.pos} cannot fit "
                            f"in the {self.left} bytes left")
        if count > self.strings_left:
            raise GGUFError(f"corrupt header: more than {_MAX_ARRAY_STRINGS} strings in arrays")
        self.strings_left -= count
        buf, size, pos, u64 = self.buf, self.size, self.pos, _U64.unpack_from
        try:
            for _ in range(count):
                (length,) = u64(buf, pos)
                pos += 8 + length
                if pos > size:
                    raise GGUFError(f"truncated or corrupt header: a {length}-byte string at byte {pos - length} "
                                    "runs past the end")
        except struct.error:  # fewer than 8 bytes left for a length
            raise GGUFError(f"truncated header at byte {pos}") from None
        self.pos = pos

    def value(self, kind: int) -> Any:
        if kind in _SCALAR:
            return self.unpack(_SCALAR[kind])
        if kind == _STRING:
            length = self.length()
            if length > _MAX_KEPT_STRING or length > self.kept_left:  # a chat template: nothing labctl reads
                self.pos += length
                return _Skipped(length)
            return self.take(length)
        if kind == _ARRAY:
            item, count = self.unpack("<I"), self.unpack("<Q")
            if item in _WIDTH:  # skipped arithmetically, once it is known to fit
                need = count * _WIDTH[item]
                if need > self.left:
                    raise GGUFError(f"corrupt header: an array of {count} items at byte {self.pos} runs past "
                                    "the end of the file")
                self.pos += need
            elif item == _STRING:
                self.skip_strings(count)
            else:
                raise GGUFError(f"corrupt header: array of unsupported type {item}")
            return _ArrayLen(count)
        raise GGUFError(f"corrupt header: unknown value type {kind} at byte {self.pos}")

    def tensors(self, count: int, sizes: dict[int, tuple[int, int]]) -> list[tuple[int, int]]:
        """(data offset, bytes) of each tensor descriptor; the names are skipped. A tight
        loop: a header may list 10^4 tensors, and a corrupt one up to _MAX_TENSORS."""
        out = []
        buf, size, pos = self.buf, self.size, self.pos
        u64, u32, tail = _U64.unpack_from, _U32.unpack_from, _TENSOR_TAIL.unpack_from
        try:
            for index in range(count):
                (name,) = u64(buf, pos)
                pos += 8
                if name > _MAX_KEY or name > size - pos:
                    raise GGUFError(f"truncated or corrupt header: tensor #{index} has a {name}-byte name "
                                    f"at byte {pos}")
                pos += name
                (n_dims,) = u32(buf, pos)
                pos += 4
                if n_dims > _MAX_DIMS or n_dims * 8 + 12 > size - pos:
                    raise GGUFError(f"truncated or corrupt header: tensor #{index} has {n_dims} dimensions "
                                    f"(at most {_MAX_DIMS}) at byte {pos}")
                elements = 1  # at most 8 dims of at most 2^64 each: a big int, never a loop
                for dim in _DIMS[n_dims].unpack_from(buf, pos):
                    elements *= dim
                kind, offset = tail(buf, pos + n_dims * 8)
                pos += n_dims * 8 + 12
                if kind not in sizes:
                    raise GGUFError(f"corrupt header: tensor #{index} has unknown type {kind}")
                block, type_size = sizes[kind]
                nbytes = elements // block * type_size
                if offset > size or nbytes > size:
                    raise GGUFError(f"truncated: tensor data needs more than the {size} bytes the file has "
                                    f"(tensor #{index}: {nbytes} bytes at data offset {offset})")
                out.append((offset, nbytes))
        except struct.error:
            raise GGUFError(f"truncated header at byte {pos}") from None
        self.pos = pos
        return out


_U64, _U32, _TENSOR_TAIL = struct.Struct("<Q"), struct.Struct("<I"), struct.Struct("<IQ")
_DIMS = [struct.Struct(f"<{n}Q") for n in range(_MAX_DIMS + 1)]


class _ArrayLen(int):
    """An array's length (its items are not kept)."""


class _Skipped(int):
    """A string value too long to keep: its length."""


def _int_value(value: object) -> int | None:
    """A scalar integer from the metadata: not a bool, an array's length or a skipped string."""
    if isinstance(value, int) and not isinstance(value, (bool, _ArrayLen, _Skipped)):
        return int(value)
    return None


@functools.lru_cache(maxsize=1)
def _tensor_sizes() -> dict[int, tuple[int, int]]:
    import gguf  # its type tables size the tensors; its reader is far too slow for headers

    return {int(kind): (int(block), int(size)) for kind, (block, size) in gguf.GGML_QUANT_SIZES.items()}


def _parse(path: Path, buf: mmap.mmap, size: int) -> GGUFInfo:
    cur = _Cursor(buf, size)
    if buf[:4] != MAGIC:
        # Never quote the bytes: through a symlink they may be someone else's secret.
        raise GGUFError("not a GGUF file (no GGUF magic)")
    cur.pos = 4
    version = cur.unpack("<I")
    if version not in SUPPORTED_VERSIONS:
        raise GGUFError(f"unsupported GGUF version {version} (supported: "
                        f"{', '.join(map(str, SUPPORTED_VERSIONS))})")
    tensor_count, kv_count = cur.unpack("<Q"), cur.unpack("<Q")
    if tensor_count > _MAX_TENSORS or kv_count > _MAX_KV:
        raise GGUFError(f"corrupt header: {tensor_count} tensors, {kv_count} metadata keys "
                        f"(at most {_MAX_TENSORS} and {_MAX_KV})")
    if tensor_count * _MIN_TENSOR + kv_count * _MIN_KV > cur.left:
        raise GGUFError(f"truncated or corrupt header: {tensor_count} tensors, {kv_count} metadata keys "
                        f"cannot fit in the {cur.left} bytes left")
    meta: dict[str, Any] = {}
    for _ in range(kv_count):
        key = cur.key()
        meta[key] = cur.value(cur.unpack("<I"))
    tensors = cur.tensors(tensor_count, _tensor_sizes())
    alignment = _alignment(meta)
    data_start = -(-cur.pos // alignment) * alignment
    data_end = data_start + max((o + n for o, n in tensors), default=0)
    if data_end > size:
        raise GGUFError(f"truncated: tensor data needs {data_end} bytes, the file has {size}")
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise GGUFError("metadata has no general.architecture")
    ctx = _int_value(meta.get(f"{arch}.context_length"))
    blocks = _int_value(meta.get(f"{arch}.block_count"))
    name = meta.get("general.name")
    kv = _kv_bytes_per_token(meta, arch, blocks)
    return GGUFInfo(
        path=path, size=size, version=version, architecture=arch, name=name if isinstance(name, str) else None,
        context_length=ctx if ctx is not None and ctx > 0 else None,
        quantization=_quantization(meta.get("general.file_type")),
        tensor_count=tensor_count,
        block_count=blocks if blocks is not None and blocks > 0 else None,
        kv_bytes_per_token=kv,
        tensor_bytes=data_end - data_start,
    )


def _kv_bytes_per_token(meta: dict[str, Any], arch: str, blocks: int | None) -> int | None:
    def num(key: str) -> int | None:
        value = meta.get(f"{arch}.{key}")
        if isinstance(value, list):  # per-layer head counts: the widest layer bounds it
            value = max((v for v in value if isinstance(v, int) and not isinstance(v, bool)), default=None)
        value = _int_value(value)
        return value if value is not None and 0 < value < 1 << 24 else None

    heads, embd = num("attention.head_count"), num("embedding_length")
    kv_heads = num("attention.head_count_kv") or heads
    k_width = num("attention.key_length") or (embd // heads if embd and heads else None)
    v_width = num("attention.value_length") or k_width
    if not (blocks and 0 < blocks < 1 << 16 and kv_heads and k_width and v_width):
        return None
    return 2 * blocks * kv_heads * (k_width + v_width)


def _alignment(meta: dict[str, Any]) -> int:
    if "general.alignment" not in meta:
        return 32
    value = meta["general.alignment"]
    alignment = _int_value(value)
    if alignment is None:
        what = ("an array" if isinstance(value, _ArrayLen) else "a bool" if isinstance(value, bool)
                else "a string" if isinstance(value, (str, _Skipped)) else type(value).__name__)
        raise GGUFError(f"corrupt header: general.alignment is {what}, not an integer")
    if not 1 <= alignment <= _MAX_ALIGNMENT or alignment & (alignment - 1):
        raise GGUFError(f"corrupt header: general.alignment {alignment} is not a power of two "
                        f"from 1 to {_MAX_ALIGNMENT}")
    return alignment


def problem(path: Path) -> str | None:
    try:
        read(path)
    except GGUFError as exc:
        return str(exc)
    return None


def context_length(path: Path) -> int | None:
    try:
        return read(path).context_length
    except GGUFError:
        return None


def _quantization(file_type: object) -> str | None:
    value = _int_value(file_type)
    if value is None:
        return None
    import gguf

    try:
        name = gguf.LlamaFileType(value).name
    except ValueError:
        return f"type {value}"
    return name.removeprefix("MOSTLY_")
