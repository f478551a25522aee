"""labctl refuses every inventory in which the real LiteLLM would read the master key.

LiteLLM replaces ``os.environ/NAME`` in its config with the variable's value: a whole value
in most places, but *anywhere* in a pass-through endpoint's header (``Bearer
os.environ/NAME``), and inside a Slack webhook URL (labctl.litellm_env). labctl's old
rule looked only at values that start with ``os.environ/``, so a header could carry the
master key to another host.

Here the configs are rendered with that old rule back in place (the control: it let each of
them through), handed to LiteLLM's own code (its proxy's config loader, its header
substitution, its Slack URL resolution, its Router) with the master key set, and for every
case in which the master key's value comes out, labctl itself must refuse the inventory with
one line at the field. The worst case runs on the real proxy: a request to the pass-through
path reaches the target (a recording server standing in for another host) with the master
key in the header.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from harness import helpers
from harness.invtext import BASE

from labctl.errors import InvalidInventory
from labctl.load import load_inventory
from labctl.kinds.litellm import gate
from labctl.kinds.litellm import config as gateway
from labctl import litellm_env

pytestmark = pytest.mark.integration

MASTER = "LITELLM_MASTER_KEY"
MASTER_VALUE = "sk-labctl-master-7f3c1e9a5b"
ANCHOR = "    fallbacks:\n"

# Where a pass-through value reaches LiteLLM (YAML at services.gateway; "route:" for
# routes[0]'s own), and the field labctl must name.
PLACES = {
    "pass-through header": ("    general_settings:\n      pass_through_endpoints:\n        - path: /x\n"
                            "          target: {target}\n          headers: {{X-Upstream: '{v}'}}\n",
                            "general_settings.pass_through_endpoints[0].headers.X-Upstream"),
    "slack webhook": ("    general_settings:\n      alert_to_webhook_url: {{llm_exceptions: '{v}'}}\n",
                      "general_settings.alert_to_webhook_url.llm_exceptions"),
    "router setting": ("    router_settings:\n      redis_password: '{v}'\n", "router_settings.redis_password"),
    "deployment header": ("route:litellm_params: {{extra_headers: {{X-Upstream: '{v}'}}}}",
                          "routes[0].litellm_params.extra_headers.X-Upstream"),
    "deployment parameter": ("route:litellm_params: {{organization: '{v}'}}", "routes[0].litellm_params.organization"),
    "model info": ("route:model_info: {{base_model: '{v}'}}", "routes[0].model_info.base_model"),
}
SHAPES = [f"os.environ/{MASTER}", f"Bearer os.environ/{MASTER}", f"x-os.environ/{MASTER}", "LITELLM_os.environ/MASTER_KEY",
          f"os.environ/os.environ/{MASTER}", "Bearer os.environ/LITELLM_os.environ/MASTER_KEY",
          f"os.environ/oidc/env/{MASTER}", f"Token os.environ/oidc/env/{MASTER}", f"{MASTER}", "Bearer os.environ/OTHER"]


def inventory_text(place: str, value: str, target: str = "https://elsewhere.example.com/collect") -> str:
    text = BASE.replace(ANCHOR, "    environment_files: [~/.config/labctl/secrets/other.env]\n" + ANCHOR)
    setting, _ = PLACES[place]
    if setting.startswith("route:"):
        line = "        " + setting.removeprefix("route:").format(v=value) + "\n"
        return text.replace("        service: native\n", "        service: native\n" + line, 1)
    return text.replace(ANCHOR, setting.format(v=value, target=target) + ANCHOR)


def old_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """labctl's rule before: a reference is a value that starts with os.environ/."""
    monkeypatch.setattr(litellm_env, "lookups",
                        lambda s: [s.removeprefix("os.environ/")] if s.startswith("os.environ/") else [])


def render_with_old_rule(monkeypatch: pytest.MonkeyPatch, text: str) -> str | None:
    """The config the old rule rendered, or None where it refused the inventory too."""
    with monkeypatch.context() as patched:
        old_rule(patched)
        try:
            inv = load_inventory("inventory.yaml", text=text).inventory
        except InvalidInventory:
            return None
        return gateway.render_gateway(inv) or ""


RESOLVE = r"""
import asyncio, copy, json, sys
from litellm import Router
from litellm.proxy.proxy_server import ProxyConfig
from litellm.proxy.pass_through_endpoints.pass_through_endpoints import set_env_variables_in_header
from litellm.integrations.SlackAlerting.utils import process_slack_alerting_variables

async def resolve(path):
    # The proxy's own loading: the file, then every os.environ/ it resolves.
    config = await ProxyConfig().get_config(config_file_path=path)
    general = config.get("general_settings") or {}
    general.pop("master_key", None)  # where the master key belongs
    seen = [config]
    for endpoint in general.get("pass_through_endpoints") or []:
        seen.append(await set_env_variables_in_header(endpoint.get("headers")))
    if general.get("alert_to_webhook_url"):
        try:
            seen.append(process_slack_alerting_variables(copy.deepcopy(general["alert_to_webhook_url"])))
        except ValueError as exc:
            seen.append(str(exc))
    router = Router(model_list=copy.deepcopy(config["model_list"]))
    seen.append([d["litellm_params"] for d in router.get_model_list()])
    return json.dumps(seen, default=str)

out = {}
for path in json.load(open(sys.argv[1])):
    out[path] = asyncio.run(resolve(path))
print(json.dumps(out))
"""


def write_config(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / gate.MODULE_FILE).write_text(gate.MODULE)  # the config loads labctl's drain gate beside it
    path = directory / f"{name}.yaml"
    path.write_text(text)
    return path


def litellm_env_vars() -> dict[str, str]:
    return {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", MASTER: MASTER_VALUE, "OTHER": "other-value"}


def test_labctl_refuses_every_place_litellm_reads_the_master_key(litellm_python: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cases: dict[str, tuple[str, str]] = {}
    refused_before: set[tuple[str, str]] = set()
    for place in PLACES:
        for i, value in enumerate(SHAPES):
            config = render_with_old_rule(monkeypatch, inventory_text(place, value))
            if config is None:
                refused_before.add((place, value))
                continue
            cases[str(write_config(tmp_path, f"{place.replace(' ', '-')}-{i}", config))] = (place, value)
    # The control: the old rule let the header through (and refused only whole values).
    assert ("pass-through header", f"Bearer os.environ/{MASTER}") not in refused_before
    assert ("pass-through header", f"os.environ/{MASTER}") in refused_before
    listing = tmp_path / "configs.json"
    listing.write_text(json.dumps(list(cases)))
    proc = subprocess.run([str(litellm_python), "-c", RESOLVE, str(listing)], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path, env=litellm_env_vars())
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    leaked = {cases[path] for path, text in seen.items() if MASTER_VALUE in text}
    # What LiteLLM really does: a header carries the master key from inside a value, and
    # every deleted os.environ/ and oidc/env/ lookup leads to it too.
    assert ("pass-through header", f"Bearer os.environ/{MASTER}") in leaked
    assert ("pass-through header", f"Token os.environ/oidc/env/{MASTER}") in leaked
    assert ("router setting", "LITELLM_os.environ/MASTER_KEY") not in leaked  # only whole values there
    assert ("deployment header", f"Bearer os.environ/{MASTER}") not in leaked
    for place, value in sorted(leaked | refused_before):
        text = inventory_text(place, value)
        with pytest.raises(InvalidInventory) as refused:
            load_inventory("inventory.yaml", text=text)
        (error,) = refused.value.errors
        assert error.path == "services.gateway." + PLACES[place][1], (place, value, error)
    # A reference to another variable, in a header: read as LiteLLM documents it, and accepted.
    assert not {case for case in leaked if case[1] == "Bearer os.environ/OTHER"}
    load_inventory("inventory.yaml", text=inventory_text("pass-through header", "Bearer os.environ/OTHER"))


class _Recorder(BaseHTTPRequestHandler):
    received: list[dict[str, str]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("content-length") or 0))
        _Recorder.received.append({k.lower(): v for k, v in self.headers.items()})
        body = b"{}"
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_the_proxy_sends_the_master_key_to_another_host(litellm_python: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The real proxy, on the config the old rule let through: the pass-through target (a
    stand-in for another host) receives the master key. labctl refuses that inventory."""
    recorder = HTTPServer((helpers.LOOPBACK, 0), _Recorder)
    threading.Thread(target=recorder.serve_forever, daemon=True).start()
    target = f"http://{helpers.LOOPBACK}:{recorder.server_address[1]}/collect"
    text = inventory_text("pass-through header", f"Bearer os.environ/{MASTER}", target=target)
    rendered = render_with_old_rule(monkeypatch, text)
    assert rendered is not None, "the old rule refused it"
    config = write_config(tmp_path / "gw", "config", rendered)
    port = helpers.free_port()
    proxy = helpers.start_process([litellm_python, "-m", "litellm.proxy.proxy_cli", "--config", config,
                                   "--host", helpers.LOOPBACK, "--port", str(port)],
                                  log_path=tmp_path / "litellm.log", env=litellm_env_vars(), cwd=tmp_path / "gw")
    try:
        base = f"http://{helpers.LOOPBACK}:{port}"
        helpers.wait_http(f"{base}/health/liveliness", timeout=180, proc=proxy)
        answer = helpers.http_request(f"{base}/x", method="POST", json_body={},
                                      headers={"x-litellm-api-key": MASTER_VALUE}, timeout=60)
        assert answer.status == 200, (answer.status, answer.text, helpers.tail(tmp_path / "litellm.log"))
    finally:
        helpers.stop_process(proxy)
        recorder.shutdown()
    (request,) = _Recorder.received
    assert request["x-upstream"] == f"Bearer {MASTER_VALUE}"
    with pytest.raises(InvalidInventory) as refused:
        load_inventory("inventory.yaml", text=text)
    (error,) = refused.value.errors
    assert error.path == "services.gateway." + PLACES["pass-through header"][1]
    assert error.message.startswith(f"os.environ/{MASTER} is the gateway's master key")
