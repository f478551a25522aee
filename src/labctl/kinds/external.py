"""``kind: external``: a model server on this host (or, in a fleet, another host) that labctl
routes to, probes and shows in ``status``, but never installs, starts, stops or restarts:
the distribution's ``ollama.service``, a llama-server someone else runs. Its port is
expected to be taken; the unit that runs it, if the inventory names one, is read (never
changed) from its own manager.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, Field

from labctl.fields import UNIT_PREFIX, ModelName, ReachAddr, SecretRef, _check_service_unit
from labctl.kinds.base import Kind, Listener, Problem, Scrape, Unit, key_problems

if TYPE_CHECKING:
    from labctl.inventory.schema import Inventory


class External(Listener):
    """A model server on this host that labctl routes to, probes and shows in ``status``,
    but never installs, starts, stops or restarts: the distribution's ``ollama.service``, a
    llama-server someone else runs. Its port is expected to be taken."""

    kind: Literal["external"]
    # What it speaks: Ollama's API (routes use ollama_chat/), or the OpenAI API (llama.cpp's
    # servers, vLLM, ...; routes use openai/ and api_base .../v1).
    api: Literal["ollama", "openai"]
    # Where labctl reaches it on this host (host.bind when unset). labctl binds nothing
    # here, so the loopback rule does not apply; what it listens on is its owner's business.
    address: ReachAddr | None = None
    # The model names it serves: routes name one of them, the probe checks it lists them.
    models: Annotated[list[ModelName], Field(min_length=1)]
    # The systemd unit that runs it, if any, for `labctl status` to show (read, never changed).
    unit: Annotated[str, AfterValidator(_check_service_unit)] | None = None
    # Which manager runs that unit: the system's (an Ollama package's ollama.service) or
    # this user's.
    unit_scope: Literal["system", "user"] = "system"
    # Its Prometheus endpoint, if it has one (llama-server --metrics: /metrics); unset, it is
    # not scraped.
    metrics_path: Annotated[str, Field(pattern=r"^/[A-Za-z0-9/_.-]{0,200}$")] | None = None
    # How long `labctl up`'s one probe of it may take (it is probed, never waited for).
    ready_timeout_sec: Annotated[int, Field(ge=1, le=7200)] = 30
    # The key it wants (Authorization: Bearer), by reference: the gateway and the probes send it.
    api_key: SecretRef | None = None


class ExternalKind(Kind):
    name = "external"
    model = External
    managed = False
    backend = True
    example = {"kind": "external", "api": "openai", "address": "127.0.0.1", "port": 8090, "models": ["theirs"],
               "description": "someone else's llama-server", "unit": "theirs-llama.service", "unit_scope": "user",
               "metrics_path": "/metrics",
               "api_key": {"env_file": "~/.config/labctl/secrets/theirs.env", "var": "THEIRS_API_KEY"}}

    def address(self, inv: Inventory, svc: Listener) -> str:
        return getattr(svc, "address") or inv.host.bind

    def served_models(self, svc: Listener) -> list[str]:
        return list(getattr(svc, "models"))

    def api(self, svc: Listener) -> str:
        return getattr(svc, "api")

    def unit(self, name: str, svc: Listener) -> Unit | None:
        unit = getattr(svc, "unit")
        return Unit(unit, getattr(svc, "unit_scope") == "user") if unit else None

    def start_hint(self, name: str, svc: Listener) -> str:
        """How its owner starts it, for a message: the unit's own systemctl line if known."""
        unit = self.unit(name, svc)
        if unit is None:
            return f"start {name} the way its owner does"
        return f"systemctl{' --user' if unit.user else ''} start {unit.name}"

    def probe(self, inv: Inventory, name: str, svc: Listener) -> dict[str, object]:
        return {"service": name, "recipe": "ollama" if self.api(svc) == "ollama" else "external",
                "url": self.base_url(inv, svc), "models": self.served_models(svc), "key": self.key_plan(inv, svc)}

    def status_row(self, inv: Inventory, name: str, svc: Listener) -> dict[str, object]:
        return {"model": ", ".join(self.served_models(svc))}

    def scrape(self, inv: Inventory, name: str, svc: Listener) -> Scrape | str:
        path = getattr(svc, "metrics_path")
        if not path:
            return f"{name}: external, without metrics_path, not scraped; `labctl status` probes it"
        # One job each: a job has one metrics path.
        return Scrape(f"external-{name}", path)

    def secrets(self, inv: Inventory, name: str, svc: Listener) -> list:
        return []  # its owner keeps its key; the gateway's doctor check reads the reference

    def checks(self, inv: Inventory, name: str, svc: Listener) -> Iterator[Problem]:
        assert isinstance(svc, External)
        yield from key_problems(self, name, svc, env_file=False)
        if svc.unit and svc.unit_scope == "user" and svc.unit.startswith(UNIT_PREFIX):
            yield Problem(("services", name, "unit"), f"{svc.unit} is a unit labctl itself runs; an external "
                                                      "service is one labctl does not run")
        for i, model in enumerate(svc.models):
            if svc.models.index(model) != i:
                yield Problem(("services", name, "models", i), f"{model!r} is listed twice")

    def external_view(self, svc: Listener) -> None:
        return None  # it is already one

    def cross_host_problem(self, name: str, svc: Listener, gateway_host: str) -> tuple[None, str]:
        return None, (f"an external service is reached from the host that lists it; list it under "
                      f"hosts.{gateway_host} (its address says where it really is)")


KIND = ExternalKind()
