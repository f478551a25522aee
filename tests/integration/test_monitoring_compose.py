"""The rendered monitoring stack, run by labctl.ops.monitoring on a real Docker engine.

A private dockerd (tests/harness/docker_engine.py) runs locally built images: Debian's
Prometheus and node exporter, and a **stand-in for Grafana** (labctl-test/grafana-standin;
Grafana itself cannot be obtained here). The inventory is tests/invtext.BASE with its home
under a temporary directory, the images swapped for the local tags and free loopback ports.

Needs root and ``docker.io`` (``apt-get install --no-install-recommends docker.io``), plus
the systemd sandbox's rootfs cache or ``debootstrap`` to build it. Missing pieces skip the
tests locally and fail them under CI=true.

Timings (dockerd start, image build or cache hit, ``up --wait``, ``down``) are printed at
the end of the module.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import docker_engine, helpers, invtext

from labctl import fsio
from labctl.errors import HostNotReady, OperationFailed
from labctl.load import load_inventory
from labctl.inventory.schema import Inventory
from labctl.ops import monitoring
from labctl.render import render_all
from labctl.inventory.layout import Layout
from labctl.render.monitoring import scrape_jobs

pytestmark = pytest.mark.integration

# Prometheus turns healthy after its first healthcheck (interval 10 s, Docker 20.10 has no
# start_interval), Grafana 10 s after that: ~20 s is the floor; leave room for loaded CI.
WAIT_TIMEOUT = 150
TARGETS_TIMEOUT = 60.0

_timings: dict[str, float] = {}


def _report_timings(config: pytest.Config) -> None:
    """Print the timings past pytest's output capture, and keep them in the cache dir."""
    line = "docker test timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in _timings.items())
    with contextlib.suppress(OSError):
        (docker_engine.cache_root() / "timings.json").write_text(json.dumps(_timings, indent=1) + "\n")
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capman = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capman is None:
        print(line)
        return
    with capman.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line(line)


@pytest.fixture(scope="module")
def engine(request: pytest.FixtureRequest) -> Iterator[docker_engine.DockerEngine]:
    eng = docker_engine.start_engine()
    _timings["dockerd start"] = eng.started_in
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key in [k for k in os.environ if k.startswith("DOCKER_")]:
                mp.delenv(key)
            mp.setenv("DOCKER_HOST", eng.host)
            yield eng
    finally:
        t = time.monotonic()
        eng.stop()
        _timings["dockerd stop"] = time.monotonic() - t
        _report_timings(request.config)


@pytest.fixture(scope="module")
def images(engine: docker_engine.DockerEngine) -> docker_engine.BuiltImages:
    t = time.monotonic()
    imgs = docker_engine.build_images(engine.client(timeout=600))
    if imgs.built:
        _timings.update({f"  {k}": v for k, v in imgs.timings.items() if k != "images total"})
    _timings["images " + (f"(built {len(imgs.built)})" if imgs.built else "(cached)")] = time.monotonic() - t
    return imgs


@dataclass(frozen=True)
class Stack:
    inv: Inventory
    layout: Layout
    config_root: Path
    rendered: dict[str, str]
    ports: dict[str, int]


def _inventory_text(home: Path, images: docker_engine.BuiltImages, ports: dict[str, int], project: str) -> str:
    return invtext.edit(
        ("  user: labuser\n", f"  user: labuser\n  home: {home}\n"),
        # Free ports for the (never started) model servers too: other tests on this machine
        # may run something on 8080 or 4000, which Prometheus would then find up.
        ("    port: 8080\n", f"    port: {ports['native']}\n"),
        ("    port: 8000\n", f"    port: {ports['bindings']}\n"),
        ("    port: 4000\n", f"    port: {ports['gateway']}\n"),
        ("monitoring:\n  enabled: true\n",
         "monitoring:\n"
         "  enabled: true\n"
         f"  project: {project}\n"
         "  scrape_interval: 1s\n"
         "  evaluation_interval: 1s\n"
         "  prometheus:\n"
         f"    image: {images.prometheus}\n"
         f"    port: {ports['prometheus']}\n"
         "  grafana:\n"
         f"    image: {images.grafana}\n"
         f"    port: {ports['grafana']}\n"
         "  node_exporter:\n"
         f"    image: {images.node_exporter}\n"
         f"    port: {ports['node_exporter']}\n"),
    )


@pytest.fixture(scope="module")
def stack(images: docker_engine.BuiltImages, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("monitoring")
    home = base / "home"
    home.mkdir()
    names = ("prometheus", "grafana", "node_exporter", "native", "bindings", "gateway")
    ports = {name: helpers.free_port() for name in names}
    while len(set(ports.values())) < len(names):
        ports = {name: helpers.free_port() for name in ports}
    text = _inventory_text(home, images, ports, f"labctl-it-{os.getpid()}")
    path = base / "inventory.yaml"
    path.write_text(text)
    inv = load_inventory(path).inventory
    layout = Layout.of(inv)
    config_root = Path(layout.config_root)
    rendered = render_all(inv)
    for rel, content in rendered.items():
        fsio.atomic_write(config_root / rel, content)  # as `labctl render` writes them
    s = Stack(inv, layout, config_root, rendered, ports)
    try:
        yield s
    finally:
        # Whatever the tests did, leave no containers or volumes behind.
        try:
            monitoring.down(inv, layout, config_root, purge=True)
        except Exception as exc:  # noqa: BLE001 - teardown must go on to stop the engine
            print(f"teardown: monitoring.down failed: {exc}")


@pytest.fixture(scope="module")
def up_result(stack: Stack) -> monitoring.MonitoringResult:
    t = time.monotonic()
    result = monitoring.up(stack.inv, stack.layout, stack.config_root, wait_timeout=WAIT_TIMEOUT)
    _timings["up --wait"] = time.monotonic() - t
    return result


def _targets(port: int) -> list[dict]:
    answer = helpers.http_json(f"http://{helpers.LOOPBACK}:{port}/api/v1/targets", timeout=10)
    assert answer.status == 200, answer.text
    return answer.json()["data"]["activeTargets"]


# --------------------------------------------------------------------------- no engine needed


def test_engine_status_explains_a_missing_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock = tmp_path / "nothing.sock"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{sock}")
    st = monitoring.engine_status(timeout=2)
    assert not st.reachable
    assert st.detail == f"no Docker engine at unix://{sock} (socket not found)"
    assert "\n" not in st.detail
    with pytest.raises(HostNotReady, match=r"\(socket not found\); start Docker or set DOCKER_HOST$"):
        monitoring.status(load_inventory("x.yaml", text=invtext.BASE).inventory)


def test_up_and_down_need_an_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inv = load_inventory("x.yaml", text=invtext.edit(
        ("  user: labuser\n", f"  user: labuser\n  home: {tmp_path}\n"))).inventory
    layout = Layout.of(inv)
    config_root = Path(layout.config_root)
    with pytest.raises(OperationFailed, match="compose.yaml does not exist"):
        monitoring.up(inv, layout, config_root)
    for rel, content in render_all(inv).items():
        fsio.atomic_write(config_root / rel, content)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")
    with pytest.raises(HostNotReady, match=r"^no Docker engine at unix://.*/none.sock \(socket not found\)"):
        monitoring.up(inv, layout, config_root)
    with pytest.raises(HostNotReady):
        monitoring.down(inv, layout, config_root)
    assert not monitoring.password_file(inv).exists(), "nothing may change on a host that is not ready"


def test_compose_binary_is_compose_v2() -> None:
    argv = monitoring.compose_binary()
    res = monitoring.run_cmd([*argv, "version", "--short"], timeout=30)
    assert res.stdout.strip().lstrip("v").startswith("2."), res.stdout


# --------------------------------------------------------------------------- the real stack


def test_engine_is_reachable(engine: docker_engine.DockerEngine) -> None:
    st = monitoring.engine_status()
    assert st.reachable, st.detail
    assert engine.host in st.detail


def test_up_brings_every_service_to_healthy(stack: Stack, up_result: monitoring.MonitoringResult) -> None:
    assert up_result.action == "up"
    assert up_result.secret_created
    services = {c.service: c for c in up_result.containers}
    assert set(services) == {"prometheus", "grafana", "node-exporter"}
    for c in services.values():
        assert (c.state, c.health) == ("running", "healthy"), c
    assert services["grafana"].image == "labctl-test/grafana-standin:1"
    assert up_result.summary.startswith(f"{stack.inv.monitoring.project}: 3 container(s) running and healthy "
                                        "(grafana, node-exporter, prometheus) in ")
    as_dict = up_result.as_dict()
    assert json.loads(json.dumps(as_dict))["containers"][0]["ok"] is True


def test_status_lists_running_healthy_containers(stack: Stack, up_result: monitoring.MonitoringResult) -> None:
    states = monitoring.status(stack.inv)
    assert [(s.service, s.state, s.health) for s in states] == [
        ("grafana", "running", "healthy"),
        ("node-exporter", "running", "healthy"),
        ("prometheus", "running", "healthy"),
    ]
    assert all(s.name.startswith(stack.inv.monitoring.project) for s in states)


def test_prometheus_scrapes_the_rendered_jobs(stack: Stack, up_result: monitoring.MonitoringResult) -> None:
    port = stack.ports["prometheus"]
    ready = helpers.http_request(f"http://{helpers.LOOPBACK}:{port}/-/ready", timeout=10)
    assert ready.status == 200
    jobs, _notes = scrape_jobs(stack.inv)
    expected = {job.name for job in jobs}
    assert {"prometheus", "node", "llama-server", "litellm"} <= expected
    # Prometheus itself and the node exporter answer; the model servers of the test
    # inventory are not running, so their targets must show as down, not vanish.
    deadline = time.monotonic() + TARGETS_TIMEOUT
    while True:
        targets = _targets(port)
        health = {t["scrapePool"]: t["health"] for t in targets}
        if health.get("prometheus") == "up" and health.get("node") == "up":
            break
        assert time.monotonic() < deadline, f"targets not up in {TARGETS_TIMEOUT:.0f}s: {health}"
        time.sleep(0.5)
    assert {t["scrapePool"] for t in targets} == expected
    assert health["llama-server"] == "down" and health["litellm"] == "down"
    node = next(t for t in targets if t["scrapePool"] == "node")
    assert node["labels"]["service"] == "node"
    # The rule files were found through the read-only mount (rule_files: rules/*.yml).
    rules = helpers.http_json(f"http://{helpers.LOOPBACK}:{port}/api/v1/rules", timeout=10).json()
    assert rules["data"]["groups"], rules
    metrics = helpers.http_request(f"http://{helpers.LOOPBACK}:{stack.ports['node_exporter']}/metrics", timeout=10)
    assert metrics.status == 200 and "node_cpu_seconds_total" in metrics.text


def test_grafana_standin_got_the_generated_password(stack: Stack, up_result: monitoring.MonitoringResult) -> None:
    answer = helpers.http_json(f"http://{helpers.LOOPBACK}:{stack.ports['grafana']}/api/health", timeout=10)
    assert answer.status == 200
    info = answer.json()["labctl_standin"]
    import hashlib

    secret_path = monitoring.password_file(stack.inv)
    value = secret_path.read_text().strip()
    assert info["admin_password_sha256"] == hashlib.sha256(value.encode()).hexdigest()
    assert info["admin_user"] == stack.inv.monitoring.grafana.admin_user
    assert info["datasources_ready"] == {f"http://127.0.0.1:{stack.ports['prometheus']}": True}
    assert info["dashboards"] == ["/etc/grafana/dashboards/labctl-overview.json"]


def test_grafana_password_stays_secret(engine: docker_engine.DockerEngine, stack: Stack,
                                       up_result: monitoring.MonitoringResult) -> None:
    secret_path = monitoring.password_file(stack.inv)
    assert str(secret_path).startswith(str(stack.config_root))
    assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600
    value = secret_path.read_text().strip()
    assert len(value) >= 32
    for rel, content in stack.rendered.items():
        assert value not in content, rel
    for path in (stack.config_root / "labctl").rglob("*"):
        if path.is_file() and path != secret_path:
            assert value not in path.read_text(errors="replace"), path
    assert up_result.output, "compose's output was not captured"
    assert value not in up_result.output
    assert value not in json.dumps(up_result.as_dict())
    client = engine.client()
    for c in client.containers.list(all=True, filters={"label": f"{monitoring.PROJECT_LABEL}="
                                                                f"{stack.inv.monitoring.project}"}):
        assert value not in json.dumps(c.attrs), f"{c.name}: the password is in its configuration"
        assert value not in c.logs().decode(errors="replace"), f"{c.name}: the password is in its log"


# The real Grafana image runs as uid 472; a file secret would keep the host file's owner
# and mode 0600, and Grafana could not read its admin password (found by this test).
def test_real_grafana_uid_could_read_the_password(stack: Stack, up_result: monitoring.MonitoringResult) -> None:
    answer = helpers.http_json(f"http://{helpers.LOOPBACK}:{stack.ports['grafana']}/api/health", timeout=10)
    assert answer.json()["labctl_standin"]["admin_password_readable_by_uid_472"]


def test_up_again_is_idempotent(stack: Stack, up_result: monitoring.MonitoringResult) -> None:
    before = {c.name: c for c in monitoring.status(stack.inv)}
    again = monitoring.up(stack.inv, stack.layout, stack.config_root, wait_timeout=WAIT_TIMEOUT)
    assert not again.secret_created
    assert {c.name for c in again.containers} == set(before)
    assert all(c.ok for c in again.containers)


def test_down_removes_the_containers_and_keeps_data(engine: docker_engine.DockerEngine, stack: Stack,
                                                    up_result: monitoring.MonitoringResult) -> None:
    t = time.monotonic()
    result = monitoring.down(stack.inv, stack.layout, stack.config_root)
    _timings["down"] = time.monotonic() - t
    assert result.action == "down"
    assert result.summary.startswith(f"{stack.inv.monitoring.project}: stopped (")
    assert result.containers == ()
    assert monitoring.status(stack.inv) == []
    with pytest.raises(OSError):
        helpers.http_request(f"http://{helpers.LOOPBACK}:{stack.ports['prometheus']}/-/ready", timeout=2)
    project = stack.inv.monitoring.project
    volumes = {v.name for v in engine.client().volumes.list(filters={"label": f"{monitoring.PROJECT_LABEL}={project}"})}
    assert volumes == {f"{project}_prometheus-data", f"{project}_grafana-data"}
    # Without the compose file (deleted, or never installed) down still works by project name.
    compose_file = monitoring.compose_file(stack.layout, stack.config_root)
    moved = compose_file.with_name("compose.yaml.moved")
    compose_file.rename(moved)
    try:
        monitoring.down(stack.inv, stack.layout, stack.config_root, purge=True)
    finally:
        moved.rename(compose_file)
    assert not engine.client().volumes.list(filters={"label": f"{monitoring.PROJECT_LABEL}={project}"})
    # The password outlives the stack: it is not a rendered file.
    assert monitoring.password_file(stack.inv).exists()


def test_up_that_times_out_says_what_is_not_ready(stack: Stack, up_result: monitoring.MonitoringResult) -> None:
    """From a stopped stack, a --wait deadline no healthcheck can meet (the first check runs
    10 s after start) fails with one line naming what was not ready."""
    monitoring.down(stack.inv, stack.layout, stack.config_root, purge=True)
    t = time.monotonic()
    try:
        with pytest.raises(OperationFailed) as err:
            monitoring.up(stack.inv, stack.layout, stack.config_root, wait_timeout=2)
        _timings["failing up"] = time.monotonic() - t
        message = str(err.value)
        assert "\n" not in message
        assert message.startswith(f"compose up for {stack.inv.monitoring.project} exited 1: "), message
        assert "not ready: " in message and "prometheus (starting" in message, message
        assert monitoring.password_file(stack.inv).read_text().strip() not in message
    finally:
        monitoring.down(stack.inv, stack.layout, stack.config_root, purge=True)
    assert monitoring.status(stack.inv) == []
