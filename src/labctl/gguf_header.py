"""Facts about a GGUF file from its header, never loading the weights.

The header is walked once through a memory map: scalar metadata is kept, arrays (a
tokenizer's vocabulary) are skipped, and each tensor's descriptor is sized with the gguf
package's type tables to prove the data section is complete. ``gguf.GGUFReader`` would
give the same facts but builds an object per vocabulary entry: 13 s for a 270M Gemma
header on these machines, against milliseconds here (bench/gguf_header.py).
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

    def as_dict(self) -> dict[str, object]:
        return {"path": str(self.path), "size": self.size, "version": self.version,
                "architecture": self.architecture, "name": self.name,
                "context_length": self.context_length, "quantization": self.quantization,
                "tensor_count": self.tensor_count, "block_count": self.block_count}


def read(path: Path) -> GGUFInfo:
    path = Path(path)
    try:
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < 8:
                raise GGUFError(f"not a GGUF file ({size} bytes)")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(path, buf, size)
    except IsADirectoryError:
        raise GGUFError("is a directory, not a GGUF file") from None
    except FileNotFoundError:
        raise GGUFError("does not exist" + (" (dangling symlink)" if path.is_symlink() else "")) from None
    except PermissionError:
        raise GGUFError("is not readable (permission denied)") from None


# Sizes of GGUF's fixed-size metadata value types (gguf.GGUFValueType).
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_LIMIT = 1 << 24  # more tensors or keys than this is a corrupt count, not a model


class _Cursor:
    """Reads GGUF's little-endian values from a memory map, bounds-checked."""

    def __init__(self, buf: mmap.mmap, size: int) -> None:
        self.buf, self.size, self.pos = buf, size, 0

    def unpack(self, fmt: str) -> Any:
        width = struct.calcsize(fmt)
        if self.pos + width > self.size:
            raise GGUFError(f"truncated header at byte {self.pos}")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += width
        return value

    def string(self) -> str:
        length = self.unpack("<Q")
        if self.pos + length > self.size:
            raise GGUFError(f"truncated or corrupt header: a {length}-byte string at byte {self.pos} runs past the end")
        raw = self.buf[self.pos:self.pos + length]
        self.pos += length
        return raw.decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        length = self.unpack("<Q")
        if self.pos + length > self.size:
            raise GGUFError(f"truncated or corrupt header: a {length}-byte string at byte {self.pos} runs past the end")
        self.pos += length

    def value(self, kind: int) -> Any:
        if kind in _SCALAR:
            return self.unpack(_SCALAR[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = self.unpack("<I"), self.unpack("<Q")
            if item in _SCALAR:  # skipped arithmetically: a vocabulary can hold 10^5 entries
                self.pos += count * struct.calcsize(_SCALAR[item])
                if self.pos > self.size:
                    raise GGUFError("corrupt header: an array runs past the end of the file")
            elif item == _STRING:
                for _ in range(count):
                    self.skip_string()
            else:
                raise GGUFError(f"corrupt header: array of unsupported type {item}")
            return _ArrayLen(count)
        raise GGUFError(f"corrupt header: unknown value type {kind} at byte {self.pos}")


class _ArrayLen(int):
    """An array's length (its items are not kept)."""


def _parse(path: Path, buf: mmap.mmap, size: int) -> GGUFInfo:
    import gguf  # its type tables size the tensors; its reader is far too slow for headers

    cur = _Cursor(buf, size)
    magic = buf[:4]
    if magic != MAGIC:
        raise GGUFError(f"not a GGUF file (starts with {bytes(magic)!r}, expected {MAGIC!r})")
    cur.pos = 4
    version = cur.unpack("<I")
    if version not in SUPPORTED_VERSIONS:
        raise GGUFError(f"unsupported GGUF version {version} (supported: "
                        f"{', '.join(map(str, SUPPORTED_VERSIONS))})")
    tensor_count, kv_count = cur.unpack("<Q"), cur.unpack("<Q")
    if tensor_count > _LIMIT or kv_count > _LIMIT:
        raise GGUFError(f"corrupt header: {tensor_count} tensors, {kv_count} metadata keys")
    meta: dict[str, Any] = {}
    for _ in range(kv_count):
        key = cur.string()
        meta[key] = cur.value(cur.unpack("<I"))
    data_end = 0
    tensors: list[tuple[int, int]] = []
    for _ in range(tensor_count):
        name = cur.string()
        dims = [cur.unpack("<Q") for _ in range(cur.unpack("<I"))]
        kind, offset = cur.unpack("<I"), cur.unpack("<Q")
        try:
            block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(kind)]
        except (ValueError, KeyError):
            raise GGUFError(f"corrupt header: tensor {name!r} has unknown type {kind}") from None
        elements = 1
        for d in dims:
            elements *= d
        tensors.append((offset, elements // block * type_size))
    alignment = meta.get("general.alignment", 32) or 32
    data_start = -(-cur.pos // alignment) * alignment
    data_end = data_start + max((o + n for o, n in tensors), default=0)
    if data_end > size:
        raise GGUFError(f"truncated: tensor data needs {data_end} bytes, the file has {size}")
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise GGUFError("metadata has no general.architecture")
    ctx = meta.get(f"{arch}.context_length")
    blocks = meta.get(f"{arch}.block_count")
    name = meta.get("general.name")
    return GGUFInfo(
        path=path, size=size, version=version, architecture=arch, name=name if isinstance(name, str) else None,
        context_length=int(ctx) if isinstance(ctx, int) and not isinstance(ctx, _ArrayLen) else None,
        quantization=_quantization(meta.get("general.file_type")),
        tensor_count=tensor_count,
        block_count=int(blocks) if isinstance(blocks, int) and not isinstance(blocks, _ArrayLen) else None,
    )


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
    if not isinstance(file_type, int):
        return None
    import gguf

    try:
        name = gguf.LlamaFileType(file_type).name
    except ValueError:
        return f"type {file_type}"
    return name.removeprefix("MOSTLY_")
