"""Facts about a GGUF file from its header, never loading the weights.

``gguf.GGUFReader`` memory-maps the file, so reading metadata and tensor descriptors
costs a few page faults, not the model's size in RAM.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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

    def as_dict(self) -> dict[str, object]:
        return {"path": str(self.path), "size": self.size, "version": self.version,
                "architecture": self.architecture, "name": self.name,
                "context_length": self.context_length, "quantization": self.quantization,
                "tensor_count": self.tensor_count}


def read(path: Path) -> GGUFInfo:
    path = Path(path)
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
        size = path.stat().st_size
    except IsADirectoryError:
        raise GGUFError("is a directory, not a GGUF file") from None
    except FileNotFoundError:
        raise GGUFError("does not exist" + (" (dangling symlink)" if path.is_symlink() else "")) from None
    except PermissionError:
        raise GGUFError("is not readable (permission denied)") from None
    if head[:4] != MAGIC:
        raise GGUFError(f"not a GGUF file (starts with {head[:4]!r}, expected {MAGIC!r})")
    version = int.from_bytes(head[4:8], "little") if len(head) == 8 else -1
    if version not in SUPPORTED_VERSIONS:
        raise GGUFError(f"unsupported GGUF version {version} (supported: "
                        f"{', '.join(map(str, SUPPORTED_VERSIONS))})")
    import gguf  # numpy-heavy; only paid for when a model file is actually inspected

    try:
        reader = gguf.GGUFReader(path, "r")
    except Exception as exc:  # the reader raises assorted errors on garbage; all mean "corrupt"
        raise GGUFError(f"corrupt GGUF header ({type(exc).__name__}: {_one_line(exc)})") from None
    data_end = max((t.data_offset + int(t.n_bytes) for t in reader.tensors), default=0)
    if data_end > size:
        raise GGUFError(f"truncated: tensor data needs {data_end} bytes, the file has {size}")
    arch = _field(reader, "general.architecture")
    if not isinstance(arch, str) or not arch:
        raise GGUFError("metadata has no general.architecture")
    ctx = _field(reader, f"{arch}.context_length")
    return GGUFInfo(
        path=path, size=size, version=version, architecture=arch,
        name=_field(reader, "general.name") if isinstance(_field(reader, "general.name"), str) else None,
        context_length=int(ctx) if isinstance(ctx, int) else None,
        quantization=_quantization(_field(reader, "general.file_type")),
        tensor_count=len(reader.tensors),
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


def _field(reader, key: str):  # type: ignore[no-untyped-def]
    field = reader.get_field(key)
    if field is None:
        return None
    try:
        value = field.contents()
    except Exception:
        return None
    if hasattr(value, "item"):
        value = value.item()
    return value


def _quantization(file_type: object) -> str | None:
    if not isinstance(file_type, int):
        return None
    import gguf

    try:
        name = gguf.LlamaFileType(file_type).name
    except ValueError:
        return f"type {file_type}"
    return name.removeprefix("MOSTLY_")


def _one_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else "no detail"
