"""Routes to servers labctl does not run (``gateway.endpoints``), through a real LiteLLM.

"The provider" is a real llama-server on loopback, started by this module (not from a
labctl unit) and requiring an API key (``--api-key-file``). The gateway gets the key only
as ``os.environ/PROVIDER_API_KEY`` from a 0600 environment file its unit loads. The
inventory is the integration stack plus that endpoint and six remote routes (twelve routes
in all), LiteLLM settings passed through, an alias onto a remote route, a chain from a remote route to a local one, and the
catch-all for the rest. With the provider stopped, every remote route is answered by the
local fallback: no request fails.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import stack_running
from harness import helpers

from labctl.host.secrets import ensure_env_secret, read_secret
from labctl.ops.gateway_check import all_ok, check_gateway
from labctl.ops.probes import probe

pytestmark = pytest.mark.integration

REMOTE = [f"cloud-{c}" for c in "abcdef"]
LOCAL_EXTRA = ["tiny-1", "tiny-2", "tiny-3"]
VAR = "PROVIDER_API_KEY"


class Provider:
    def __init__(self, binary: Path, model: Path, root: Path) -> None:
        self.key_env = root / "provider.env"
        ensure_env_secret(self.key_env, VAR)
        self.key = read_secret(self.key_env, VAR)
        keys = root / "provider-keys"
        keys.write_text(self.key + "\n")
        keys.chmod(0o600)
        self.port = helpers.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port),
                     "--api-key-file", str(keys), "-c", "256", "-t", "1", "--alias", "provider-model"]
        self.log = root / "provider.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = helpers.start_process(self.argv, log_path=self.log)
        helpers.wait_http(self.url + "/health", timeout=120, proc=self.proc, interval=0.2)

    def stop(self) -> None:
        if self.proc is not None:
            helpers.stop_process(self.proc)
            self.proc = None


@pytest.fixture(scope="module")
def provider(tmp_path_factory, tiny_models_dir: Path, llama_server_binary: Path):
    p = Provider(llama_server_binary, tiny_models_dir / "current.gguf", tmp_path_factory.mktemp("provider"))
    p.start()
    try:
        yield p
    finally:
        p.stop()


def with_remote_routes(provider: Provider):
    def edit(text: str) -> str:
        endpoint = (f"    endpoints:\n      provider:\n        provider: openai\n"
                    f"        api_base: {provider.url}/v1\n"
                    f"        api_key: {{env_file: {provider.key_env}, var: {VAR}}}\n")
        routes = "".join(f"      - name: {name}\n        endpoint: provider\n        model: provider-model\n"
                         for name in REMOTE)
        # Pass-through settings LiteLLM must accept as written (the proxy refuses some
        # misplaced ones at start-up; the rest it would ignore, which labctl refuses).
        routes = routes.replace("        model: provider-model\n", "        model: provider-model\n"
                                "        litellm_params: {rpm: 1000, stream_timeout: 60}\n"
                                "        model_info: {max_input_tokens: 256}\n", 1)
        endpoint = ("    router_settings: {routing_strategy: simple-shuffle}\n"
                    "    litellm_settings: {request_timeout: 120}\n" + endpoint)
        routes += "".join(f"      - name: {name}\n        service: native\n" for name in LOCAL_EXTRA)
        text = text.replace("    routes:\n", endpoint + "    routes:\n" + routes, 1)
        text = text.replace("      fast: native\n", "      fast: native\n      big: cloud-a\n", 1)
        return text.replace("      native: [bindings, small]\n",
                            "      native: [bindings, small]\n      cloud-a: [native, bindings]\n", 1)
    return edit


@pytest.fixture(scope="module")
def remote_stack(tmp_path_factory, tiny_models_dir, llama_server_binary, llama_cpp_python, litellm_python,
                 provider):
    tool_paths = {"llama_server": llama_server_binary, "llama_cpp_python": llama_cpp_python,
                  "litellm_python": litellm_python}
    with stack_running(tmp_path_factory, tiny_models_dir, tool_paths, with_remote_routes(provider)) as stack:
        yield stack


def group(result: helpers.HttpResult) -> str | None:
    return {k.lower(): v for k, v in result.headers.items()}.get("x-litellm-model-group")


def api_base(result: helpers.HttpResult) -> str | None:
    return {k.lower(): v for k, v in result.headers.items()}.get("x-litellm-model-api-base")


def test_the_provider_requires_its_key(provider: Provider) -> None:
    body = {"model": "provider-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}):
        refused = helpers.http_request(provider.url + "/v1/chat/completions", method="POST", json_body=body,
                                       headers=headers, timeout=60)
        assert refused.status == 401, (refused.status, refused.text)
    ok = helpers.http_request(provider.url + "/v1/chat/completions", method="POST", json_body=body,
                              headers={"Authorization": f"Bearer {provider.key}"}, timeout=60)
    assert ok.status == 200, ok.text


def test_the_key_is_a_reference_only(remote_stack, provider: Provider) -> None:
    config = remote_stack.files["labctl/litellm/config.yaml"]
    assert provider.key not in config and provider.key not in json.dumps(remote_stack.files)
    entries = {m["model_name"]: m for m in yaml.safe_load(config)["model_list"]}
    for name in REMOTE:
        # cloud-a also carries the pass-through parameters, beside labctl's own.
        extra = {"rpm": 1000, "stream_timeout": 60} if name == "cloud-a" else {}
        assert entries[name]["litellm_params"] == {"model": "openai/provider-model", "api_base": f"{provider.url}/v1",
                                                   "api_key": f"os.environ/{VAR}", **extra}
    assert entries["cloud-a"]["model_info"] == {"max_input_tokens": 256}
    unit = remote_stack.servers["gateway"].unit
    assert provider.key_env in unit.environment_files


def test_models_lists_every_route_and_alias(remote_stack) -> None:
    result = helpers.http_request(remote_stack.gateway_url + "/v1/models", headers=remote_stack.headers(),
                                  timeout=60)
    assert result.status == 200, result.text
    names = [r.name for r in remote_stack.gateway.routes]
    assert len(names) >= 12 and len([n for n in names if n in REMOTE]) == 6
    assert sorted(m["id"] for m in result.json()["data"]) == sorted(names + list(remote_stack.gateway.aliases))
    # labctl's own readiness probe (what `up` and `status` wait on) agrees.
    ready = probe(remote_stack.inventory, "gateway")
    assert ready.ok, ready


def test_every_route_answers_remote_ones_from_the_provider(remote_stack, provider: Provider) -> None:
    for route in remote_stack.gateway.routes:
        result = remote_stack.chat(route.name)
        assert result.status == 200, f"{route.name}: HTTP {result.status}: {result.text}{remote_stack.context()}"
        assert group(result) == route.name
        if route.endpoint:
            assert api_base(result) == f"{provider.url}/v1"
    alias = remote_stack.chat("big")
    assert alias.status == 200 and api_base(alias) == f"{provider.url}/v1", alias.headers


def test_gateway_check_exercises_remote_routes(remote_stack) -> None:
    results = check_gateway(remote_stack.inventory, remote_stack.key, timeout=120)
    assert all_ok(results), json.dumps([r.as_dict() for r in results], indent=1)
    checked = {(r.check, r.route) for r in results}
    assert {("route", name) for name in REMOTE} <= checked and ("fallback", "cloud-a") in checked
    assert {r.backend for r in results if r.route in REMOTE and r.check == "route"} == {"provider (endpoint)"}


def test_provider_down_every_remote_route_falls_back_locally(remote_stack, provider: Provider) -> None:
    provider.stop()
    try:
        failed = []
        for _ in range(2):
            for name in REMOTE:
                result = remote_stack.chat(name)
                if result.status != 200:
                    failed.append((name, result.status, result.text[:200]))
                    continue
                # cloud-a has its own chain (native first); the others take the catch-all.
                assert group(result) == "native", (name, result.headers)
        assert failed == [], failed
    finally:
        provider.start()
