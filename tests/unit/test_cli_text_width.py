"""`labctl doctor`, `plan`, `model list` and `gateway check` for people: piped at 80 (or
60) columns, every line fits and breaks only between words, so each long path, file name
and service name comes out whole on one line; `--wide` keeps the one-line-per-thing form
(the table, where there was one). Diff lines are printed as they are."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from harness.invtext import edit, with_service

from labctl import cli
from labctl.cli import main
from labctl.host.gguf_writer import write_tiny_gguf
from labctl.load import checks
from labctl.ops.doctor import Check
from labctl.ops.gateway_check import RouteResult

pytestmark = pytest.mark.unit

LONG = "a-rather-long-service-name-for-the-coder"  # NAME_RE's longest: 40 characters
LONG_BINARY = "/opt/a-vendor-directory-with-a-long-name/llama.cpp/build-cuda-12.4-sm89/bin/llama-server"
LONG_MODELS = "/srv/models/library-of-quantised-models-for-the-coding-assistants/current"
LONG_GGUF = "qwen2.5-coder-32b-instruct-abliterated-imatrix-q4_k_m-00001-of-00002.gguf"
GGUFS = [LONG_GGUF, "Meta-Llama-3.1-8B-Instruct-Q5_K_M.gguf", "gemma-3-270m-it-Q4_K_M.gguf",
         "deepseek-coder-v2-lite-instruct-q8_0.gguf"]


def run(capsys, monkeypatch, width: int, *args: str) -> tuple[int, str, str]:
    """``labctl ARGS`` as when piped into a terminal of ``width`` columns (``COLUMNS``)."""
    monkeypatch.setenv("COLUMNS", str(width))
    monkeypatch.setattr(cli.out, "_width", None)  # not the COLUMNS of the process that imported labctl
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    assert "\x1b" not in captured.out  # piped: no colour
    return int(exit_info.value.code or 0), captured.out, captured.err


def assert_fits(out: str, width: int, whole: list[str], *, exempt: set[str] = frozenset()) -> None:
    """Every line fits ``width``, except one that is a single word longer than it (or one
    of ``exempt``, a diff line); every string of ``whole`` is on one line, in one piece."""
    lines = out.splitlines()
    for line in lines:
        if line in exempt:
            continue
        assert len(line) <= width or len(line.split()) == 1, f"{len(line)} > {width}: {line!r}"
    for text in whole:
        assert any(text in line for line in lines), f"{text!r} is not whole on any line:\n{out}"


def assert_no_word_split(out: str, words: list[str]) -> None:
    """No line ends with the start of one of ``words`` and the next line goes on with the
    rest of it."""
    lines = out.splitlines()
    for first, second in zip(lines, lines[1:]):
        if not first.split() or not second.split():
            continue
        tail, head = first.split()[-1], second.split()[0]
        for word in words:
            for start in range(len(tail)):  # the word may start inside the token: "(fix:", "a/b"
                piece, rest = tail[start:], word[len(tail) - start:]
                split = word.startswith(piece) and rest and (rest.startswith(head) or head.startswith(rest))
                assert not split, f"{word!r} split: {first!r} / {second!r}"


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    models, state = tmp_path / "models", tmp_path / "state"
    models.mkdir()
    text = edit(("  gpu: false\n", f"  gpu: false\n  models_dir: {models}\n  state_dir: {state}\n"),
                base=with_service(f"""\
  {LONG}:
    kind: llama-server
    binary: {LONG_BINARY}
    port: 8090
    alias: coder
    n_gpu_layers: 0
    ctx_size: 2048
"""))
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    return path


# --- doctor --------------------------------------------------------------------------


@pytest.fixture
def doctor_checks(monkeypatch, inventory: Path, tmp_path: Path) -> list[Check]:
    """doctor's checks without asking the host (ss, systemctl, docker): the inventory's real
    file problems (``fix: edit inventory.yaml:LINE``) and long ones built like doctor's."""
    from labctl.load import load_inventory
    from labctl.ops import doctor

    loaded = load_inventory(inventory)
    found = [Check(p.path, "fail", p.message, f"edit {p.file}:{p.line}")
             for p in checks.file_problems(loaded.inventory, loaded.source)]
    made = found + [
        Check("user", "ok", "running as labuser"),
        Check(f"{LONG} working directory", "warn", f"{tmp_path}/state/{LONG} does not exist yet",
              "labctl up creates it before the unit starts"),
        Check("gateway master key", "fail", f"{tmp_path}/secrets/litellm.env is mode 644, readable by others",
              f"chmod 600 {tmp_path}/secrets/litellm.env"),
        Check("model", "fail", f"{LONG_MODELS}/{LONG_GGUF}/and-then-some-more does not exist", "edit inventory.yaml:9"),
    ]
    monkeypatch.setattr(doctor, "run_doctor", lambda loaded, **kw: made)
    return made


@pytest.mark.parametrize("width", [80, 60])
def test_doctor_folds_each_check_under_its_status_word(capsys, monkeypatch, inventory, doctor_checks, width) -> None:
    code, out, _ = run(capsys, monkeypatch, width, "doctor", "-i", str(inventory))
    assert code == 1  # some check failed
    assert any(LONG_BINARY in c.message for c in doctor_checks)  # the real file check saw it
    lines = out.splitlines()
    assert_fits(out, width, [LONG_BINARY, f"services.{LONG}.binary:", LONG, "inventory.yaml:9", f"{inventory}:",
                             f"{LONG_MODELS}/{LONG_GGUF}/and-then-some-more", "chmod 600"])
    assert_no_word_split(out, [LONG_BINARY, LONG, f"{LONG_MODELS}/{LONG_GGUF}/and-then-some-more"])
    # Each check starts with its status word; every other line is indented under it.
    starts = [line for line in lines if not line.startswith(" ")]
    assert [line[:4] for line in starts] == [f"{c.status:<4}" for c in doctor_checks]
    assert all(line.startswith("     ") for line in lines if line not in starts)
    # The same words as on one line each (so none was cut in two): only the breaks moved.
    assert " ".join(out.split()) == " ".join(" ".join(str(c).split()) for c in doctor_checks)


def test_doctor_wide_is_one_line_per_check(capsys, monkeypatch, inventory, doctor_checks) -> None:
    code, out, _ = run(capsys, monkeypatch, 80, "doctor", "-i", str(inventory), "--wide")
    assert out.splitlines() == [str(c) for c in doctor_checks]


# --- plan ----------------------------------------------------------------------------


GPU = ("  gpu: false\n", "  gpu: true\n  gpu_memory_gib: 7.5\n")


def test_plan_folds_its_prose_and_keeps_diffs_as_they_are(capsys, monkeypatch, tmp_path, inventory) -> None:
    # A GPU host (the budget block first) whose llama servers offload: each share names
    # the model file it cannot read, a long path.
    text = inventory.read_text().replace(*GPU).replace("n_gpu_layers: 0\n", "n_gpu_layers: 99\n")
    inventory.write_text(text)
    root = tmp_path / "root"
    assert run(capsys, monkeypatch, 80, "render", "-i", str(inventory), "--out", str(root))[0] == 0
    unit = root / f"systemd/user/labctl-{LONG}.service"
    long_line = "# " + " ".join(["an operator's comment that is far longer than any terminal"] * 3)
    unit.write_text(unit.read_text() + long_line + "\n")
    (root / f"systemd/user/labctl-{LONG}.service.d").mkdir()
    drop_in = "50-an-operator-drop-in-with-a-long-descriptive-name-for-cuda.conf"
    (root / f"systemd/user/labctl-{LONG}.service.d" / drop_in).write_text("[Service]\nNice=5\n")
    for width in (80, 60):
        code, out, _ = run(capsys, monkeypatch, width, "plan", "-i", str(inventory), "--root", str(root))
        assert code == 0
        diff = [line for line in out.splitlines() if line[:1] in "+- @" and not line.startswith("  ")]
        assert f"-{long_line}" in diff  # the diff line whole, byte for byte, however wide
        assert_fits(out, width, [f"systemd/user/labctl-{LONG}.service", drop_in, f"labctl-{LONG}.service",
                                 "GPU memory:"], exempt=set(diff))
        assert_no_word_split(out, [f"labctl-{LONG}.service", drop_in, str(tmp_path)])
        assert re.search(rf"^  restart( |\n    )labctl-{LONG}\.service", out, re.M)
        assert re.search(rf"^      {tmp_path}/models/current\.gguf:( does not exist|$)", out, re.M)
    code, wide, _ = run(capsys, monkeypatch, 80, "plan", "-i", str(inventory), "--root", str(root), "--wide")
    assert f"labctl-{LONG}.service: operator drop-ins, kept as they are and overriding labctl's unit: {drop_in}" in wide


def test_plan_creating_everything_fits(capsys, monkeypatch, tmp_path, inventory) -> None:
    code, out, _ = run(capsys, monkeypatch, 60, "plan", "-i", str(inventory), "--root", str(tmp_path / "empty"),
                       "--no-diff")
    assert code == 0
    assert_fits(out, 60, [f"systemd/user/labctl-{LONG}.service", f"labctl-{LONG}.service"])
    # The path is longer than a line: it has one of its own, under the verb's.
    assert f"create\n       systemd/user/labctl-{LONG}.service\n" in out
    assert f"  start\n    labctl-{LONG}.service\n    (new unit)\n" in out


# --- model list ----------------------------------------------------------------------


@pytest.fixture
def models(inventory: Path, tmp_path: Path) -> Path:
    directory = tmp_path / "models"
    for i, name in enumerate(GGUFS):
        write_tiny_gguf(directory / name, name=f"GGUF model number {i} with a long general name", seed=i)
    (directory / "current.gguf").symlink_to(GGUFS[1])
    (directory / "a-link-to-nowhere-that-someone-left-behind-in-the-models-dir.gguf").symlink_to("gone.gguf")
    return directory


@pytest.mark.parametrize("width", [80, 60])
def test_model_list_is_aligned_columns_and_never_cuts_a_file_name(capsys, monkeypatch, inventory, models,
                                                                  width) -> None:
    code, out, _ = run(capsys, monkeypatch, width, "model", "list", "-i", str(inventory))
    assert code == 0
    lines = out.splitlines()
    names = [*GGUFS, "a-link-to-nowhere-that-someone-left-behind-in-the-models-dir.gguf"]
    assert_fits(out, width, names)
    assert_no_word_split(out, names)
    assert lines[0].split()[:2] == ["FILE", "SIZE"]  # a header line, docker ps style
    current = [line for line in lines if line.startswith("* ")]
    assert current and current[0].split()[1] == GGUFS[1]  # * marks current.gguf's target
    assert "\u2501" not in out and "\u2503" not in out and "\u2502" not in out  # no box
    # The columns line up: each row's size ends where the header's SIZE does.
    size_end = lines[0].index("SIZE") + 4
    rows = [line for line in lines[1:] if "MiB" in line]
    assert rows and all(line.index("MiB") + 3 == size_end for line in rows)
    # A problem is an indented note below its row; what was left out is said.
    assert re.search(r"^ {4}note: .*dangling", out, re.M)
    assert re.search(r"\((\w+, )*NAME left out to fit \d+ columns; --wide shows every column\)$", " ".join(out.split()))


def test_model_list_wide_is_the_table(capsys, monkeypatch, inventory, models) -> None:
    code, out, _ = run(capsys, monkeypatch, 80, "model", "list", "-i", str(inventory), "--wide")
    assert code == 0
    assert "architecture" in out and "quantisation" in out and "\u2503" in out  # rich's box
    assert "GGUF model number 0 with a long general name" in out  # general.name, every column
    assert any(LONG_GGUF in line for line in out.splitlines())  # at its natural width: whole


def test_an_empty_models_dir_says_so(capsys, monkeypatch, inventory, tmp_path) -> None:
    for extra in ((), ("--wide",)):
        code, out, _ = run(capsys, monkeypatch, 80, "model", "list", "-i", str(inventory), *extra)
        assert code == 0 and " ".join(out.split()) == f"no models in the models dir {tmp_path / 'models'}"
        assert_fits(out, 80, [str(tmp_path / "models")])


# --- gateway check -------------------------------------------------------------------


def results() -> list[RouteResult]:
    return [
        RouteResult("route", "native", None, 200, "native", "native", 0, 12.3, None),
        RouteResult("route", LONG, None, 200, LONG, LONG, 0, 812.0, None),
        RouteResult("alias", "coder", LONG, 200, LONG, LONG, 0, 9.0, None),
        RouteResult("fallback", "bindings", "native", 200, "native", "native", 1, 44.0, None),
        RouteResult("fallback", "bindings", LONG, None, None, None, None, 3.0,
                    "connection refused: http://127.0.0.1:4000/v1/chat/completions (is the gateway running?)"),
        RouteResult("route", "bindings", None, 200, "native", "native", 1, 40.0, None),
    ]


@pytest.fixture
def gateway(monkeypatch) -> list[RouteResult]:
    from labctl.ops import gateway_check, probes

    made = results()
    monkeypatch.setattr(probes, "gateway_key", lambda inv, gw: "sk-test")
    monkeypatch.setattr(gateway_check, "check_gateway", lambda inv, key=None, timeout=60: made)
    return made


@pytest.mark.parametrize("width", [80, 60])
def test_gateway_check_is_aligned_columns(capsys, monkeypatch, inventory, gateway, width) -> None:
    code, out, _ = run(capsys, monkeypatch, width, "gateway", "check", "-i", str(inventory))
    assert code == 4  # something failed
    lines = out.splitlines()
    assert lines[0] == "labctl gateway check: 6 check(s), 2 FAILED"
    assert_fits(out, width, [LONG, "http://127.0.0.1:4000/v1/chat/completions"])
    assert_no_word_split(out, [LONG, "http://127.0.0.1:4000/v1/chat/completions"])
    if width == 80:  # columns under a header line; the 40-character route on a line of its own
        assert lines[1].split()[:4] == ["RESULT", "CHECK", "ROUTE", "FALLBACK"]
        assert re.search(r"^ok +route +native +-", out, re.M)
        assert re.search(rf"^FAIL +fallback +bindings +{LONG}$", out, re.M)
        assert re.search(rf"^ok +route +{LONG}$", out, re.M)
    else:  # a FALLBACK TO of 40 characters leaves no room for columns: each check, folded
        assert re.search(r"^ok route native$", out, re.M)
        assert f"FAIL fallback bindings fallback to {LONG}, latency 3 ms error:" in " ".join(out.split())
    assert re.search(r"^ {4}error: connection refused:", out, re.M)
    assert re.search(r"^ {4}answered by native, not bindings$", out, re.M)  # failed without an error


def test_gateway_check_wide_is_the_table(capsys, monkeypatch, inventory, gateway) -> None:
    code, out, _ = run(capsys, monkeypatch, 80, "gateway", "check", "-i", str(inventory), "--wide")
    assert code == 4
    assert out.startswith("labctl gateway check\n") and "answered by" in out and "\u2503" in out
    assert any("connection refused: http://127.0.0.1:4000/v1/chat/completions (is the gateway running?)" in line
               for line in out.splitlines())  # natural width: nothing folded


def test_gateway_check_with_all_ok(capsys, monkeypatch, inventory, gateway) -> None:
    gateway[:] = [r for r in gateway if r.ok]
    code, out, _ = run(capsys, monkeypatch, 80, "gateway", "check", "-i", str(inventory))
    assert code == 0 and out.splitlines()[0] == "labctl gateway check: 4 check(s), all ok"
    assert "error" not in out
