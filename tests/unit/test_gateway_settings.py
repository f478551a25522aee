"""LiteLLM's own settings, passed through: every key checked against what the pinned
LiteLLM reads (labctl.kinds.litellm.setting_keys), keys labctl writes itself refused, secrets only
as ``os.environ/VAR`` naming a variable the gateway's process will have.

The keys LiteLLM ignored for months in the operators' real config (``lab_extensions``
under router_settings, a top-level-style ``rate_limit_settings``) are refused here.
"""

from __future__ import annotations

import pytest
import yaml
from harness.invtext import BASE, edit

from labctl.cli import main
from labctl.load import load_inventory
from labctl.kinds.litellm import config as gateway

pytestmark = pytest.mark.unit

ANCHOR = "    fallbacks:\n"


def errors(tmp_path, text: str, capsys) -> list[str]:
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as exited:
        main(["validate", "-i", str(path)])
    assert exited.value.code == 2
    prefix = f"{path}:"
    lines = capsys.readouterr().err.strip().splitlines()
    assert all(line.startswith(prefix) for line in lines), lines
    return [line.removeprefix(prefix) for line in lines]


def ok(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 0


def gateway_extra(extra: str) -> tuple[str, int]:
    """BASE with ``extra`` before the gateway's fallbacks, and the line ``extra`` starts on."""
    text = edit((ANCHOR, extra + ANCHOR))
    return text, text[:text.index(extra)].count("\n") + 1


CASES = [
    ("    router_settings:\n      lab_extensions: {a: 1}\n", 1,
     "services.gateway.router_settings.lab_extensions: 'lab_extensions' is not a router_settings key LiteLLM "
     "1.106.2 reads; it would be silently ignored"),
    ("    litellm_settings:\n      rate_limit_settings: {a: 1}\n", 1,
     "services.gateway.litellm_settings.rate_limit_settings: 'rate_limit_settings' is not a litellm_settings "
     "key LiteLLM 1.106.2 reads; it would be silently ignored (did you mean 'vertex_ai_safety_settings'?)"),
    ("    router_settings:\n      routing_stratgy: simple-shuffle\n", 1,
     "services.gateway.router_settings.routing_stratgy: 'routing_stratgy' is not a router_settings key "
     "LiteLLM 1.106.2 reads; it would be silently ignored (did you mean 'routing_strategy'?)"),
    ("    router_settings:\n      model_group_alias: {a: native}\n", 1,
     "services.gateway.router_settings.model_group_alias: model_group_alias is set by labctl from "
     "services.gateway.aliases; set that instead"),
    ("    general_settings:\n      master_key: os.environ/X\n", 1,
     "services.gateway.general_settings.master_key: master_key is set by labctl from "
     "services.gateway.master_key; set that instead"),
    ("    general_settings:\n      database_url: postgresql://llm:hunter2@db/litellm\n", 1,
     "services.gateway.general_settings.database_url: the value is a URL with a password in it; secrets go "
     "in LiteLLM's settings only as os.environ/VAR, the value in a 0600 environment file"),
    ("    general_settings:\n      database_url: os.environ/DATABASE_URL\n", 1,
     "services.gateway.general_settings.database_url: os.environ/DATABASE_URL: the gateway's environment "
     "will not have DATABASE_URL; put it in a 0600 file listed in services.gateway.environment_files"),
    ("    router_settings:\n      redis_password: os.environ/LITELLM_MASTER_KEY\n", 1,
     "services.gateway.router_settings.redis_password: os.environ/LITELLM_MASTER_KEY is the gateway's master "
     "key; LiteLLM would hand it to whatever reads this setting"),
    ("    general_settings:\n      alerting: [slack]\n      alerting_args: {webhook_token: abc}\n", 2,
     "services.gateway.general_settings.alerting_args.webhook_token: its name says it holds a secret; "
     "secrets go in LiteLLM's settings only as os.environ/VAR, the value in a 0600 environment file"),
]


@pytest.mark.parametrize("extra, offset, message", CASES, ids=[c[2].split(":")[0].split(".", 2)[2] for c in CASES])
def test_bad_setting(tmp_path, capsys, extra: str, offset: int, message: str) -> None:
    text, line = gateway_extra(extra)
    assert errors(tmp_path, text, capsys) == [f"{line + offset}: {message}"]


def test_route_parameters_are_checked(tmp_path, capsys) -> None:
    text = edit(("        service: bindings\n", "        service: bindings\n"
                                                "        litellm_params: {api_base: 'http://x', rmp: 1}\n"))
    line = text[:text.index("        litellm_params")].count("\n") + 1
    assert errors(tmp_path, text, capsys) == [
        f"{line}: services.gateway.routes[1].litellm_params.api_base: api_base is set by labctl from "
        "services.gateway.endpoints; set that instead",
        f"{line}: services.gateway.routes[1].litellm_params.rmp: 'rmp' is not a litellm_params key LiteLLM "
        "1.106.2 reads; it would be silently ignored (did you mean 'rpm'?)",
    ]


def test_model_info_keeps_the_operators_metadata_and_warns_on_a_near_miss(tmp_path, capsys) -> None:
    """model_info is LiteLLM's "additional metadata on the model", returned by /model/info:
    an operator's own tags are accepted and rendered as written; a key a letter away from one
    LiteLLM reads is accepted too, with a warning naming the key it likely meant, on stdout
    after validate's verdict, in its --json, and on stderr for the other commands."""
    text = edit(("        service: bindings\n", "        service: bindings\n"
                                                "        model_info: {team: search, owner: ana, tier: gold, "
                                                "max_input_tokns: 1, Max_Tokens: 2, max_output_tokens: 64}\n"))
    line = text[:text.index("        model_info")].count("\n") + 1
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    ok(["validate", "-i", str(path)])
    shown = capsys.readouterr()
    warned = [line.strip() for line in shown.out.splitlines() if line.startswith("warning:") or line.startswith("  ")]
    assert " ".join(warned) == (
        f"warning: {path}:{line}: services.gateway.routes[1].model_info.max_input_tokns: 'max_input_tokns' is not "
        "a model_info key LiteLLM 1.106.2 reads, but 'max_input_tokens' is: kept as metadata (returned by "
        "/model/info), and LiteLLM does not see it as 'max_input_tokens' "
        f"warning: {path}:{line}: services.gateway.routes[1].model_info.Max_Tokens: 'Max_Tokens' is not a "
        "model_info key LiteLLM 1.106.2 reads, but 'max_tokens' is: kept as metadata (returned by /model/info), "
        "and LiteLLM does not see it as 'max_tokens'"), shown.out
    assert shown.err == ""
    ok(["validate", "-i", str(path), "--json"])
    document = yaml.safe_load(capsys.readouterr().out)
    assert [w.split(": ")[1] for w in document["warnings"]] == [
        "services.gateway.routes[1].model_info.max_input_tokns", "services.gateway.routes[1].model_info.Max_Tokens"]
    ok(["render", "-i", str(path), "--out", str(tmp_path / "out")])
    assert capsys.readouterr().err.count("warning:") == 2
    cfg = yaml.safe_load(next((tmp_path / "out").rglob("litellm/config.yaml")).read_text())
    (bindings,) = [m for m in cfg["model_list"] if m["model_name"] == "bindings"]
    assert bindings["model_info"] == {"team": "search", "owner": "ana", "tier": "gold", "max_input_tokns": 1,
                                      "Max_Tokens": 2, "max_output_tokens": 64}


def test_settings_render_where_litellm_reads_them() -> None:
    text, _ = gateway_extra(
        "    master_key: {env_file: ~/.config/labctl/secrets/litellm.env, var: LITELLM_MASTER_KEY}\n"
        "    environment_files: [~/.config/labctl/secrets/db.env]\n"
        "    router_settings: {routing_strategy: least-busy, enable_pre_call_checks: true}\n"
        "    litellm_settings: {request_timeout: 120, num_retries: 2}\n"
        "    general_settings: {background_health_checks: true, health_check_interval: 300,\n"
        "                       database_url: os.environ/DATABASE_URL}\n")
    text = text.replace("        service: bindings\n", "        service: bindings\n"
                                                      "        litellm_params: {rpm: 60, extra_body: {cache_prompt: true}}\n"
                                                      "        model_info: {max_input_tokens: 256}\n", 1)
    inv = load_inventory("inventory.yaml", text=text).inventory
    cfg = yaml.safe_load(gateway.render_gateway(inv) or "")
    assert cfg["router_settings"]["routing_strategy"] == "least-busy"
    assert cfg["router_settings"]["enable_pre_call_checks"] is True
    assert cfg["router_settings"]["num_retries"] == 1  # labctl's typed num_retries, untouched
    assert cfg["litellm_settings"]["request_timeout"] == 120 and cfg["litellm_settings"]["num_retries"] == 2
    assert cfg["general_settings"] == {"master_key": "os.environ/LITELLM_MASTER_KEY", "background_health_checks": True,
                                       "health_check_interval": 300, "database_url": "os.environ/DATABASE_URL"}
    (bindings,) = [m for m in cfg["model_list"] if m["model_name"] == "bindings"]
    assert bindings["litellm_params"]["rpm"] == 60
    assert bindings["litellm_params"]["extra_body"] == {"cache_prompt": True}
    assert bindings["litellm_params"]["model"] == "openai/bindings"
    assert bindings["model_info"] == {"max_input_tokens": 256}


# --- os.environ/ wherever LiteLLM reads it (labctl.litellm_env) ------------------------

# Each place a pass-through value reaches LiteLLM: the YAML that sets it at services.gateway
# (under the gateway, or under routes[0] for a deployment's own), and the dotted field.
PLACES = {
    "pass-through header": ("    general_settings:\n      pass_through_endpoints:\n        - path: /x\n"
                            "          target: https://elsewhere.example.com/collect\n"
                            "          headers: {{X-Upstream: '{v}'}}\n",
                            "general_settings.pass_through_endpoints[0].headers.X-Upstream"),
    "slack webhook": ("    general_settings:\n      alert_to_webhook_url: {{llm_exceptions: '{v}'}}\n",
                      "general_settings.alert_to_webhook_url.llm_exceptions"),
    "router setting": ("    router_settings:\n      redis_password: '{v}'\n", "router_settings.redis_password"),
    "litellm setting": ("    litellm_settings:\n      xai_key: '{v}'\n", "litellm_settings.xai_key"),
    "deployment header": ("route:litellm_params: {{extra_headers: {{X-Upstream: '{v}'}}}}",
                          "routes[0].litellm_params.extra_headers.X-Upstream"),
    "model info": ("route:model_info: {{base_model: '{v}'}}", "routes[0].model_info.base_model"),
}
MASTER = "LITELLM_MASTER_KEY"
# Every way of writing a string LiteLLM 1.106.2 reads as the master key somewhere.
READS_THE_MASTER_KEY = [f"os.environ/{MASTER}", f"Bearer os.environ/{MASTER}", f"x-os.environ/{MASTER}",
                        f"os.environ/os.environ/{MASTER}", "Bearer os.environ/LITELLM_os.environ/MASTER_KEY"]
# Ways LiteLLM reads as something other than one variable (an OIDC lookup: oidc/env/NAME
# returns NAME's value; a name with a space in it).
NOT_ONE_VARIABLE = [f"os.environ/oidc/env/{MASTER}", f"Token os.environ/oidc/env/{MASTER}",
                    "oidc/env/LITELLM_MASTER_os.environ/KEY", f"os.environ/{MASTER} x"]


def with_setting(place: str, value: str, extra: str = "") -> tuple[str, int]:
    """BASE with ``value`` at ``place``, and the line the value is on."""
    yaml_text, _ = PLACES[place]
    if yaml_text.startswith("route:"):
        line = "        " + yaml_text.removeprefix("route:").format(v=value) + "\n"
        text = edit(("        service: native\n", "        service: native\n" + line + extra))
        return text, text[:text.index(line)].count("\n") + 1
    setting = yaml_text.format(v=value)
    text, start = gateway_extra(setting + extra)
    return text, start + setting.count("\n") - 1


@pytest.mark.parametrize("place", list(PLACES))
@pytest.mark.parametrize("value", READS_THE_MASTER_KEY + NOT_ONE_VARIABLE)
def test_the_master_key_is_refused_wherever_litellm_would_read_it(tmp_path, capsys, place, value) -> None:
    text, line = with_setting(place, value)
    field = "services.gateway." + PLACES[place][1]
    (error,) = errors(tmp_path, text, capsys)
    assert error.startswith(f"{line}: {field}: "), error
    if value in READS_THE_MASTER_KEY:
        assert error.endswith(f"os.environ/{MASTER} is the gateway's master key; LiteLLM would hand it to whatever "
                              "reads this setting"), error
    else:
        assert "LiteLLM would read this os.environ/ reference as something other than one environment variable" in error


@pytest.mark.parametrize("place", list(PLACES))
def test_a_reference_to_a_variable_the_gateway_has_is_read_where_it_is(place) -> None:
    """The header form LiteLLM documents (Bearer os.environ/NAME) is fine for any other variable."""
    text, _ = with_setting(place, "Bearer os.environ/UPSTREAM_TOKEN",
                           extra="    environment_files: [~/.config/labctl/secrets/upstream.env]\n"
                           if not PLACES[place][0].startswith("route:") else "")
    if PLACES[place][0].startswith("route:"):
        text = edit(("    fallbacks:\n", "    environment_files: [~/.config/labctl/secrets/upstream.env]\n"
                                       "    fallbacks:\n"), base=text)
    config = gateway.render_gateway(load_inventory("inventory.yaml", text=text).inventory) or ""
    assert "Bearer os.environ/UPSTREAM_TOKEN" in config


def test_a_reference_the_old_prefix_check_missed_is_refused_and_was_not(tmp_path, capsys, monkeypatch) -> None:
    """The control: with the old rule (a reference is a value that starts with os.environ/),
    the inventory loads and the config carries the master key's reference in a header,
    which LiteLLM fills in and sends to the pass-through target
    (tests/integration/test_litellm_env.py shows it on the real proxy)."""
    from labctl import litellm_env

    text, _ = with_setting("pass-through header", f"Bearer os.environ/{MASTER}")
    assert len(errors(tmp_path, text, capsys)) == 1
    monkeypatch.setattr(litellm_env, "lookups", lambda s: [s.removeprefix("os.environ/")]
                        if s.startswith("os.environ/") else [])
    config = yaml.safe_load(gateway.render_gateway(load_inventory("inventory.yaml", text=text).inventory) or "")
    (endpoint,) = config["general_settings"]["pass_through_endpoints"]
    assert endpoint["headers"] == {"X-Upstream": f"Bearer os.environ/{MASTER}"}


def test_the_renderer_refuses_a_config_that_reads_the_master_key_elsewhere() -> None:
    """Defence in depth: gateway.verify finds what the inventory checks should have refused."""
    inv = load_inventory("inventory.yaml", text=BASE).inventory
    cfg = gateway.config(inv, inv.services["gateway"])
    assert gateway.verify(inv, cfg) == []
    cfg["general_settings"]["pass_through_endpoints"] = [{"path": "/x", "target": "https://elsewhere.example.com",
                                                          "headers": {"X-Up": "Bearer os.environ/LITELLM_os.environ/MASTER_KEY",
                                                                      "X-Id": "os.environ/oidc/env/X"}}]
    assert gateway.verify(inv, cfg) == [
        "general_settings.pass_through_endpoints.0.headers.X-Up: reads the master key, which LiteLLM would hand to "
        "whatever reads it",
        "general_settings.pass_through_endpoints.0.headers.X-Id: an os.environ/ reference LiteLLM would not read as "
        "one variable"]
