"""LiteLLM's own settings, passed through: every key checked against what the pinned
LiteLLM reads (labctl.render.litellm_keys), keys labctl writes itself refused, secrets only
as ``os.environ/VAR`` naming a variable the gateway's process will have.

The keys LiteLLM ignored for months in the operators' real config (``lab_extensions``
under router_settings, a top-level-style ``rate_limit_settings``) are refused here.
"""

from __future__ import annotations

import pytest
import yaml
from invtext import BASE, edit

from labctl.cli import main
from labctl.inventory.load import load_inventory
from labctl.render import gateway

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
                                                "        litellm_params: {api_base: 'http://x', rmp: 1}\n"
                                                "        model_info: {max_input_tokns: 1}\n"))
    line = text[:text.index("        litellm_params")].count("\n") + 1
    assert errors(tmp_path, text, capsys) == [
        f"{line}: services.gateway.routes[1].litellm_params.api_base: api_base is set by labctl from "
        "services.gateway.endpoints; set that instead",
        f"{line}: services.gateway.routes[1].litellm_params.rmp: 'rmp' is not a litellm_params key LiteLLM "
        "1.106.2 reads; it would be silently ignored (did you mean 'rpm'?)",
        f"{line + 1}: services.gateway.routes[1].model_info.max_input_tokns: 'max_input_tokns' is not a "
        "model_info key LiteLLM 1.106.2 reads; it would be silently ignored (did you mean 'max_input_tokens'?)",
    ]


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
