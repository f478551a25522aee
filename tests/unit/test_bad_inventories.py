"""Every bad inventory gets exactly one line, naming file, line and field, and exit 2.

Each case is a small edit of tests/invtext.BASE; the expected text is the whole line
labctl prints after ``<file>:``.
"""

from __future__ import annotations

import pytest

from harness.invtext import BASE, VLLM, edit, with_service
from labctl.cli import main

# routes[1] (bindings) sent to the endpoint 'cloud' instead.
TO_CLOUD = ("        service: bindings", "        endpoint: cloud\n        model: m")


def with_endpoint(api_base: str = "https://api.example.com/v1", *, provider: str = "openai",
                  route: tuple[str, str] | None = TO_CLOUD) -> str:
    """BASE with an endpoint 'cloud' on the gateway (lines 25-28) and, unless route is None,
    that edit of the routes."""
    endpoint = f"    endpoints:\n      cloud:\n        provider: {provider}\n        api_base: {api_base}\n"
    return edit(("    routes:\n", endpoint + "    routes:\n"), *([route] if route else []))


CASES: list[tuple[str, str, str]] = [
    # --- the file itself ---------------------------------------------------------
    ("yaml-syntax", "version: 1\nhost: [\n",
     "3: (yaml): YAML syntax error: expected the node content, but found '<stream end>'"),
    ("yaml-tab-indent", "version: 1\nhost:\n\tuser: x\n",
     "3: (yaml): YAML syntax error: found character '\\t' that cannot start any token"),
    ("empty-file", "", "1: (document): file is empty, expected a mapping"),
    ("only-comments", "# nothing here\n", "1: (document): file is empty, expected a mapping"),
    ("top-level-list", "- a\n- b\n", "1: (document): expected a mapping at the top level, got a list"),
    ("top-level-string", "hello\n", "1: (document): expected a mapping at the top level, got a string"),
    ("two-documents", BASE + "---\nversion: 1\n",
     "35: (document): more than one YAML document; labctl reads exactly one"),
    ("merge-key", edit(("  native:\n    kind", "  native:\n    <<: {port: 1}\n    kind")),
     "7: services.native: YAML merge keys ('<<') are not supported"),
    ("duplicate-service", with_service("  native:\n    kind: ollama\n    models: [x]\n"),
     "32: services.native: duplicate key (first defined on line 6)"),
    # --- schema ------------------------------------------------------------------
    ("version-2", edit(("version: 1", "version: 2")),
     "1: version: unsupported inventory version 2; this labctl reads version 1"),
    ("missing-host", edit(("host:\n  user: labuser\n  gpu: false\n", "")),
     "1: host: required key is missing"),
    ("unknown-top-key", edit(("monitoring:", "monitorin:")),
     "32: monitorin: unknown key (did you mean 'monitoring'?)"),
    ("unknown-service-key", edit(("    port: 8080", "    portt: 8080")),
     "9: services.native.portt: unknown key (did you mean 'port'?)"),
    ("port-not-a-number", edit(("port: 8080", "port: eighty")),
     "9: services.native.port: input should be a valid integer"),
    ("port-out-of-range", edit(("port: 8080", "port: 70000")),
     "9: services.native.port: input should be less than or equal to 65535"),
    ("unknown-kind", edit(("kind: llama-server", "kind: llama-srv")),
     "6: services.native: unknown service kind 'llama-srv'; expected one of: ollama, llama-cpp-python, "
     "llama-server, vllm, program, litellm, external, redis, redis-exporter"),
    ("missing-kind", edit(("    kind: llama-server\n", "")),
     "6: services.native: service needs a 'kind' (one of: ollama, llama-cpp-python, llama-server, vllm, "
     "program, litellm, external, redis, redis-exporter)"),
    ("missing-alias", edit(("    alias: native\n", "")), "6: services.native.alias: required key is missing"),
    ("bad-service-name", edit(("  native:\n", "  Native_1:\n")),
     "6: services.Native_1: 'Native_1' is not allowed here (must match ^[a-z0-9][a-z0-9-]{0,39}$)"),
    ("bad-user", edit(("user: labuser", "user: Lab User")),
     "3: host.user: 'Lab User' is not allowed here (must match ^[a-z_][a-z0-9_-]{0,31}$)"),
    ("relative-binary", edit(("binary: /opt/llama/bin/llama-server", "binary: bin/llama-server")),
     "8: services.native.binary: must be an absolute path or start with ~/ (the host user's home)"),
    ("runtime-venv-and-python", edit(("      python: /opt/litellm/bin/python",
                                      "      python: /opt/litellm/bin/python\n      venv: /opt/litellm")),
     "22: services.gateway.runtime: set exactly one of venv or python"),
    ("n-gpu-layers-negative", edit(("    n_gpu_layers: 0\n    ctx_size", "    n_gpu_layers: -1\n    ctx_size")),
     "11: services.native.n_gpu_layers: must be a number of layers (0 or more) or 'all' (llama-server's every "
     "layer; -1 is llama-cpp-python's word for it)"),
    ("ctx-too-small", edit(("ctx_size: 2048", "ctx_size: 10")),
     "12: services.native.ctx_size: input should be greater than or equal to 64"),
    ("gpu-mem-1.5", with_service(VLLM + "    gpu_memory_utilization: 1.5\n"),
     "43: services.coder.gpu_memory_utilization: input should be less than or equal to 1"),
    ("gpu-mem-0", with_service(VLLM + "    gpu_memory_utilization: 0\n"),
     "43: services.coder.gpu_memory_utilization: input should be greater than 0"),
    ("scrape-interval", edit(("  enabled: true\n", "  enabled: true\n  scrape_interval: fast\n")),
     "34: monitoring.scrape_interval: 'fast' is not allowed here (must match ^[1-9][0-9]{0,8}(ms|s|m|h|d|w|y)$)"),
    ("image-without-tag", edit(("  enabled: true\n", "  enabled: true\n  grafana: {image: grafana/grafana}\n")),
     "34: monitoring.grafana.image: must be an image reference with a version tag, such as "
     "prom/prometheus:v2.53.2 (optionally REGISTRY/ before it and @sha256:DIGEST after it)"),
    ("gpu-exporter-without-gpu", edit(("  enabled: true\n", "  enabled: true\n  gpu_exporter: {enabled: true}\n")),
     "34: monitoring.gpu_exporter.enabled: host.gpu is false: there is no GPU for nvidia-smi to report on this host"),
    ("gpu-exporter-latest", edit(("  enabled: true\n",
                                  "  enabled: true\n  gpu_exporter: {image: 'utkuozdemir/nvidia_gpu_exporter:latest'}\n")),
     "34: monitoring.gpu_exporter.image: pin the image to a version tag, not :latest"),
    ("bind-not-an-ip", edit(("  gpu: false\n", "  gpu: false\n  bind: localhost\n")),
     "5: host.bind: must be an IP address such as 127.0.0.1"),
    # --- secrets -------------------------------------------------------------------
    ("inline-master-key", edit(("    port: 4000\n", "    port: 4000\n    master_key: sk-1234\n")),
     "25: services.gateway.master_key: secrets must not be inline in the inventory; reference them with "
     "{env_file: PATH, var: NAME} or {env: NAME}"),
    ("inline-secret-env", edit(("    ctx_size: 2048\n", "    ctx_size: 2048\n    environment: {HF_TOKEN: abc}\n")),
     "13: services.native.environment.HF_TOKEN: HF_TOKEN names a secret; secrets must not be inline (unit "
     "files are world-readable and argv is public): put it in a 0600 file listed in environment_files"),
    ("secret-ref-empty", edit(("    port: 4000\n", "    port: 4000\n    master_key: {generate: true}\n")),
     "25: services.gateway.master_key: a secret reference needs {env_file: PATH, var: NAME} or {env: NAME}"),
    # --- cross-checks ----------------------------------------------------------------
    ("duplicate-port", edit(("port: 8000", "port: 8080")),
     "17: services.bindings.port: port 8080 is already used by services.native"),
    ("port-clash-monitoring", edit(("port: 4000", "port: 9090")),
     "32: monitoring.prometheus.port: port 9090 is already used by services.gateway"),
    ("public-bind-host", edit(("  gpu: false\n", "  gpu: false\n  bind: 0.0.0.0\n")),
     "5: host.bind: 0.0.0.0 is not a loopback address; binding beyond loopback needs "
     "host.allow_public_bind: true"),
    ("public-bind-service", edit(("    port: 8080\n", "    port: 8080\n    bind: 0.0.0.0\n")),
     "10: services.native.bind: 0.0.0.0 is not a loopback address; binding beyond loopback needs "
     "host.allow_public_bind: true"),
    ("host-flag-in-extra-args", edit(("    ctx_size: 2048\n", "    ctx_size: 2048\n    extra_args: [--host, 0.0.0.0]\n")),
     "13: services.native.extra_args[0]: --host is set by labctl from the typed field; set that field instead"),
    ("gpu-host-zero-layers", edit(("gpu: false", "gpu: true"), ("    alias: bindings\n    n_gpu_layers: 0", "    alias: bindings\n    n_gpu_layers: 20")),
     "11: services.native.n_gpu_layers: 0 on a GPU host runs the model on the CPU; set the layers to "
     "offload, or host.gpu: false for a CPU-only host"),
    ("ctx-per-slot", edit(("ctx_size: 2048", "ctx_size: 128\n    parallel: 4")),
     "12: services.native.ctx_size: ctx_size 128 split over parallel 4 leaves 32 tokens per slot (minimum 64)"),
    ("awq-float32", with_service(VLLM.replace("dtype: float16", "dtype: float32")),
     "40: services.coder.dtype: vLLM refuses float32 with awq quantization; use float16 or bfloat16"),
    ("vllm-cpu-without-kv-cache", with_service(VLLM.replace("    cpu_kv_cache_gib: 1\n", "")),
     "41: services.coder.device: device: cpu needs cpu_kv_cache_gib (GiB of RAM for the KV cache); without it "
     "vLLM reserves gpu_memory_utilization of all RAM and refuses to start"),
    ("vllm-device-flag", with_service(VLLM + "    extra_args: [--device, cpu]\n"),
     "43: services.coder.extra_args[0]: --device is set by labctl from the typed field; set that field instead"),
    ("dangling-route", edit(("        service: bindings", "        service: nope")),
     "29: services.gateway.routes[1].service: no service named 'nope'"),
    ("route-to-disabled", edit(("    ctx_size: 2048\n", "    ctx_size: 2048\n    enabled: false\n")),
     "28: services.gateway.routes[0].service: service 'native' is disabled"),
    ("route-to-gateway", edit(("        service: bindings", "        service: gateway")),
     "29: services.gateway.routes[1].service: 'gateway' is a litellm service, not a model backend"),
    ("route-wrong-model", edit(("        service: native", "        service: native\n        model: other")),
     "28: services.gateway.routes[0].model: services.native serves 'native', not 'other'"),
    ("duplicate-route", edit(("      - name: bindings", "      - name: native"),
                             ("    fallbacks:\n      bindings: [native]\n", "")),
     "28: services.gateway.routes[1].name: route 'native' is already defined at routes[0]"),
    ("dangling-fallback", edit(("bindings: [native]", "bindings: [ghost]")),
     "31: services.gateway.fallbacks.bindings[0]: chain 'bindings' falls back to undefined model 'ghost' "
     "(routes: bindings, native)"),
    ("fallback-undefined-primary", edit(("bindings: [native]", "ghost: [native]")),
     "31: services.gateway.fallbacks.ghost: fallback chain for undefined model 'ghost' (routes: bindings, native); "
     "'*' is the catch-all"),
    ("fallback-cycle", edit(("bindings: [native]", "bindings: [native]\n      native: [bindings]")),
     "31: services.gateway.fallbacks.bindings: fallback cycle: bindings -> native -> bindings"),
    ("fallback-self", edit(("bindings: [native]", "bindings: [bindings]")),
     "31: services.gateway.fallbacks.bindings[0]: chain 'bindings' falls back to itself"),
    ("fallback-empty-chain", edit(("bindings: [native]", "bindings: []")),
     "31: services.gateway.fallbacks.bindings: chain 'bindings' is empty"),
    ("catch-all-as-target", edit(("bindings: [native]", 'bindings: [native]\n      "*": ["*"]')),
     "32: services.gateway.fallbacks[\"*\"][0]: chain '*' falls back to undefined model '*' "
     "(routes: bindings, native)"),
    ("alias-undefined", edit(("    fallbacks:\n", "    aliases:\n      fast: ghost\n    fallbacks:\n")),
     "31: services.gateway.aliases.fast: alias 'fast' names undefined model 'ghost' (routes: bindings, native)"),
    ("alias-is-a-route", edit(("    fallbacks:\n", "    aliases:\n      native: bindings\n    fallbacks:\n")),
     "31: services.gateway.aliases.native: alias 'native' is also a route name; a name must mean one thing"),
    ("context-window-undefined", edit(("    fallbacks:\n", "    context_window_fallbacks:\n      native: [ghost]\n"
                                                       "    fallbacks:\n")),
     "31: services.gateway.context_window_fallbacks.native[0]: chain 'native' falls back to undefined model "
     "'ghost' (routes: bindings, native)"),
    ("context-window-catch-all", edit(("    fallbacks:\n", '    context_window_fallbacks:\n      "*": [native]\n'
                                                       "    fallbacks:\n")),
     "31: services.gateway.context_window_fallbacks[\"*\"]: fallback chain for undefined model '*' "
     "(routes: bindings, native)"),
    # --- remote endpoints (with_endpoint: lines 25-28) -----------------------
    ("endpoint-unknown-provider", with_endpoint(provider="opnai"),
     "27: services.gateway.endpoints.cloud.provider: 'opnai' is not a provider LiteLLM 1.106.2 knows "
     "(did you mean 'openai'?)"),
    ("endpoint-url-credentials", with_endpoint("https://u:p@api.example.com/v1"),
     "28: services.gateway.endpoints.cloud.api_base: must not carry credentials (user:password@); give the "
     "key as api_key, by reference"),
    ("endpoint-url-query", with_endpoint("https://api.example.com/v1?key=abc"),
     "28: services.gateway.endpoints.cloud.api_base: must not have a query or fragment (keys in URLs end up "
     "in logs); use api_key"),
    ("endpoint-url-token", with_endpoint("https://api.example.com/sk-proj-abcdefghijklmnopqrstuvwxyz0123456789/v1"),
     "28: services.gateway.endpoints.cloud.api_base: the URL looks like an API token; give the key as "
     "api_key, by reference"),
    ("endpoint-not-http", with_endpoint("ftp://api.example.com/v1"),
     "28: services.gateway.endpoints.cloud.api_base: must be an http:// or https:// URL with a host, such as "
     "https://api.example.com/v1"),
    ("endpoint-unused", with_endpoint(route=None),
     "26: services.gateway.endpoints.cloud: endpoint 'cloud' is not used by any route"),
    ("route-to-undefined-endpoint", edit(TO_CLOUD),
     "29: services.gateway.routes[1].endpoint: no endpoint named 'cloud' in services.gateway.endpoints "
     "(none defined)"),
    ("route-service-and-endpoint",
     with_endpoint(route=("        service: bindings", "        service: bindings\n        endpoint: cloud")),
     "32: services.gateway.routes[1]: a route names exactly one of service (run here) or endpoint "
     "(gateway.endpoints)"),
    ("endpoint-route-without-model", with_endpoint(route=("        service: bindings", "        endpoint: cloud")),
     "32: services.gateway.routes[1]: a route to an endpoint needs 'model' (the model name the provider knows)"),
    ("ollama-route-without-model", with_service("  local:\n    kind: ollama\n    models: [llama3.1]\n",
                                                edit(("        service: bindings", "        service: local"))),
     "28: services.gateway.routes[1]: a route to ollama service 'local' needs 'model' (one of the service's models)"),
    ("ollama-host-env", with_service("  local:\n    kind: ollama\n    models: [x]\n"
                                     "    environment: {OLLAMA_HOST: 0.0.0.0}\n"),
     "35: services.local.environment.OLLAMA_HOST: OLLAMA_HOST is set by labctl from bind and port"),
    ("image-latest", edit(("  enabled: true\n", "  enabled: true\n  grafana: {image: grafana/grafana:latest}\n")),
     "34: monitoring.grafana.image: pin the image to a version tag, not :latest"),
    ("two-gateways", with_service("  gw2:\n    kind: litellm\n    runtime: {python: /usr/bin/python3}\n"
                                  "    port: 4001\n    routes: [{name: x, service: native}]\n"),
     "32: services.gw2: only one enabled litellm gateway is supported (also: gateway)"),
]


@pytest.mark.parametrize("case,text,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_inventory_one_line_exit_2(tmp_path, capsys, case, text, expected):
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "-i", str(path)])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2
    assert captured.out == ""
    assert captured.err == f"{path}:{expected}\n"


def test_case_ids_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 30


def test_base_is_valid(tmp_path, capsys):
    path = tmp_path / "inventory.yaml"
    path.write_text(BASE)
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "-i", str(path)])
    assert exit_info.value.code == 0, capsys.readouterr().err


def test_not_utf8(tmp_path, capsys):
    path = tmp_path / "inventory.yaml"
    path.write_bytes(b"version: 1\nhost: {user: \xff}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "-i", str(path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(f"{path}:0: (file): not UTF-8 text")


def test_missing_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "-i", str(tmp_path / "nope.yaml")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"{tmp_path / 'nope.yaml'}:0: (file): no such file\n"


def test_json_errors_on_stdout(tmp_path, capsys):
    import json

    path = tmp_path / "inventory.yaml"
    path.write_text(edit(("bindings: [native]", "bindings: [ghost]")))
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "-i", str(path), "--json"])
    assert exit_info.value.code == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False
    assert doc["errors"] == [{"file": str(path), "line": 31, "path": "services.gateway.fallbacks.bindings[0]",
                              "message": "chain 'bindings' falls back to undefined model 'ghost' "
                                         "(routes: bindings, native)"}]


def test_several_problems_one_line_each(tmp_path, capsys):
    path = tmp_path / "inventory.yaml"
    path.write_text(edit(("port: 8000", "port: 8080"), ("bindings: [native]", "bindings: [ghost]")))
    with pytest.raises(SystemExit):
        main(["validate", "-i", str(path)])
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(": ", 2)[1] for line in lines] == [
        "services.bindings.port", "services.gateway.fallbacks.bindings[0]"]
