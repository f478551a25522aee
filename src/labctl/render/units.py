"""systemd user units, one per enabled service, from what its kind says
(labctl.kinds: argv, environment, env files, writable paths, GPU use, restart policy,
dependencies). How values are written into a unit (quoting, %, $, line ends): labctl.encode.
"""

from __future__ import annotations

from labctl import encode
from labctl.inventory.layout import Layout
from labctl.inventory.schema import Inventory, unit_name
from labctl.kinds import kind_of
from labctl.kinds.base import Loc, ServiceBase
from labctl.render import templates


def argv(inv: Inventory, name: str, svc: ServiceBase, layout: Layout) -> list[str]:
    """The unit's command line: the kind's, then the operator's extra_args."""
    return kind_of(svc).argv(inv, name, svc, layout) + list(svc.extra_args)


def environment(inv: Inventory, name: str, svc: ServiceBase, layout: Layout) -> dict[str, str]:
    """The kind's variables, the operator's over them, and the operator's values the kind
    reads as typed values last, as it reads them (an Ollama models path, normalised)."""
    kind = kind_of(svc)
    return {**kind.environment(inv, name, svc, layout), **svc.environment, **kind.operator_environment(inv, svc)}


def environment_files(inv: Inventory, name: str, svc: ServiceBase) -> list[str]:
    files = [inv.host.expand(p) for p in svc.environment_files] + kind_of(svc).environment_files(inv, name, svc)
    return list(dict.fromkeys(files))


def dependencies(inv: Inventory, name: str, svc: ServiceBase) -> list[str]:
    """Units this one starts after (a gateway after the backends its routes use, an
    exporter after its Redis)."""
    return [unit_name(dep) for dep in kind_of(svc).dependencies(inv, name, svc)]


def uses_gpu(inv: Inventory, svc: ServiceBase) -> bool:
    """Whether the service needs the GPU's device nodes (so no PrivateDevices=)."""
    return kind_of(svc).uses_gpu(inv, svc)


def writable_sources(inv: Inventory, name: str, svc: ServiceBase, layout: Layout) -> list[tuple[str, str, Loc]]:
    """What a hardened service may write, each as (path, what the inventory said, where it
    said it): its working directory (vLLM's caches live there), what its kind writes (Ollama's
    key pair and model store), and the operator's read_write_paths."""
    out: list[tuple[str, str, Loc]] = [(layout.working_directory(name), inv.host.state_dir, ("host", "state_dir"))]
    out += kind_of(svc).writable(inv, name, svc)
    out += [(inv.host.expand(p), p, ("services", name, "read_write_paths", i))
            for i, p in enumerate(svc.read_write_paths)]
    return out


def writable_paths(inv: Inventory, name: str, svc: ServiceBase, layout: Layout) -> list[str]:
    """The paths of :func:`writable_sources`, once each. labctl creates them."""
    return list(dict.fromkeys(path for path, _, _ in writable_sources(inv, name, svc, layout)))


# The sandboxing set every hardened unit gets. PrivateUsers= is what makes the rest take
# effect in a user unit (systemd before 253 ignores mount-namespace options there without
# it). Left out on purpose, because a booted machine showed them failing: ProtectKernelLogs=
# (it masks /proc/kmsg, which containers lack, and an unprivileged user cannot read it
# anyway) and ProcSubset=pid (it clashes with that mask). DevicePolicy=, IPAddressDeny= and
# the other cgroup-BPF options need privileges a user manager does not have.
HARDENING = (
    "NoNewPrivileges=yes", "PrivateUsers=yes", "PrivateTmp=yes", "PrivateIPC=yes", "ProtectSystem=strict",
    "ProtectHome=read-only", "ProtectKernelTunables=yes", "ProtectKernelModules=yes", "ProtectControlGroups=yes",
    "ProtectClock=yes", "ProtectHostname=yes", "ProtectProc=invisible", "RestrictNamespaces=yes",
    "RestrictRealtime=yes", "RestrictSUIDSGID=yes", "LockPersonality=yes", "SystemCallArchitectures=native",
    "SystemCallFilter=@system-service", "SystemCallFilter=~@privileged", "CapabilityBoundingSet=",
    "AmbientCapabilities=", "UMask=0077", "KeyringMode=private", "RemoveIPC=yes",
)


def hardening(inv: Inventory, name: str, svc: ServiceBase, layout: Layout) -> list[encode.Encoded]:
    if not inv.hardened(svc):
        return []
    kind = kind_of(svc)
    gpu = kind.uses_gpu(inv, svc)
    lines = [encode.Encoded(line) for line in HARDENING]
    if not gpu:
        lines.append(encode.Encoded("PrivateDevices=yes"))
    # JIT code needs writable+executable memory: oneDNN in PyTorch (vLLM), GPU drivers.
    if not kind.jit and not gpu:
        lines.append(encode.Encoded("MemoryDenyWriteExecute=yes"))
    # Go's runtime and PyTorch read interfaces over netlink.
    families = "AF_UNIX AF_INET AF_INET6" + (" AF_NETLINK" if kind.netlink else "")
    lines.append(encode.Encoded(f"RestrictAddressFamilies={families}"))
    lines += [encode.Encoded(f"ReadWritePaths={encode.sd_path_word(p)}") for p in writable_paths(inv, name, svc, layout)]
    return lines


def limits(inv: Inventory, svc: ServiceBase) -> list[encode.Encoded]:
    lim = inv.limits_of(svc)
    out = []
    if lim.memory_high:
        out.append(f"MemoryHigh={encode.sd_size(lim.memory_high)}")
    if lim.memory_max:
        out.append(f"MemoryMax={encode.sd_size(lim.memory_max)}")
    if lim.cpu_quota_percent:
        out.append(f"CPUQuota={lim.cpu_quota_percent}%")  # no specifiers in CPUQuota=
    if lim.io_weight:
        out.append(f"IOWeight={lim.io_weight}")
    if lim.tasks_max:
        out.append(f"TasksMax={lim.tasks_max}")
    if lim.nice is not None:
        out.append(f"Nice={lim.nice}")
    return [encode.Encoded(line) for line in out]


def render_unit(inv: Inventory, name: str, svc: ServiceBase, layout: Layout) -> str:
    kind = kind_of(svc)
    restart, notes = kind.restart_policy(inv.restart_of(svc))
    address = inv.bind_of(svc)
    return templates.render(
        "units/service.j2",
        stop_note=notes.get("stop"),
        header=f"{name} ({kind.name}), listening on {address}:{svc.port}",
        description=svc.description or f"labctl: {name} ({kind.name}) on {address}:{svc.port}",
        after=dependencies(inv, name, svc),
        restart=restart,
        restart_note=notes.get("restart"),
        working_directory=layout.working_directory(name),
        environment=[encode.sd_assign(k, v) for k, v in sorted(environment(inv, name, svc, layout).items())],
        environment_files=environment_files(inv, name, svc),
        exec_start=encode.sd_exec(argv(inv, name, svc, layout)),
        # Type=exec: start completes at exec, so this bounds only a hung exec; sized from the
        # readiness deadline so a future notify-style start is not cut short.
        timeout_start_sec=svc.ready_timeout_sec,
        unit_stem=unit_name(name).removesuffix(".service"),
        hardening=hardening(inv, name, svc, layout),
        limits=limits(inv, svc),
    )


def render_units(inv: Inventory, layout: Layout) -> dict[str, str]:
    return {layout.unit(name): render_unit(inv, name, svc, layout) for name, svc in inv.managed().items()}
