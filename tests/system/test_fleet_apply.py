"""One inventory, three booted machines, applied by Ansible from a controller on their network.

The machines (tests/harness/fleetlab.py) are systemd-nspawn containers, each in a network
namespace of its own on a bridge the test creates, sshd on its private address; the
controller runs in a namespace on the same bridge, so every packet stays on networks the test
made. From the controller, `labctl up` of examples/fleet/inventory.yaml (a llama-server on
gpu-a and gpu-b, the LiteLLM gateway on edge) goes through ansible-playbook: labctl installed
on each machine from the controller's wheels, each host's slice and keys copied, `labctl up`
run there (edge reached over SSH by its name, hosts.edge.ssh_host). Then, for real:

- every route answers through the gateway;
- a backend refuses a request from another host without its key (401), serves it with it;
- a second `up` restarts nothing on any host (every InvocationID unchanged);
- powering gpu-a off mid-load: the gateway serves every request through gpu-b (0 failed);
  `labctl status` names gpu-a within its bounds; gpu-a back and `up` again converges with
  no restart on the healthy hosts.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
LABCTL = str(Path(sys.executable).with_name("labctl"))
EXAMPLE = ROOT / "examples" / "fleet" / "inventory.yaml"
UNITS = {"gpu-a": ["labctl-llama-a.service"], "gpu-b": ["labctl-llama-b.service"], "edge": ["labctl-gateway.service"]}


@pytest.fixture(scope="module")
def fleet(fleet_lab, fleet_wheelhouse, tmp_path_factory):  # type: ignore[no-untyped-def]
    """The example fleet inventory pointed at the lab: its network, key, wheels; state in tmp."""
    lab = fleet_lab
    work = tmp_path_factory.mktemp("fleet")
    data = yaml.safe_load(EXAMPLE.read_text())
    data["fleet"].update({"network": str(lab.network), "ssh_key": str(lab.ssh_key),
                          "state_dir": str(work / "state"), "pip": {"find_links": str(fleet_wheelhouse.path)},
                          "connect_timeout_sec": 5, "status_timeout_sec": 30})
    for name in ("gpu-a", "gpu-b", "edge"):
        data["hosts"][name]["address"] = lab.address[name]
    # The controller reaches edge by a name its resolver knows (an operator's DNS or
    # /etc/hosts), the others by their addresses: both are ssh's and Ansible's to resolve.
    data["hosts"]["edge"]["ssh_host"] = lab.dns_name["edge"]
    path = work / "inventory.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return lab, path


def labctl(lab, *args: str, timeout: float = 900) -> tuple[int, Any, str, float]:  # type: ignore[no-untyped-def]
    """``labctl ARGS --json`` in the controller namespace: (rc, the JSON document, stderr, seconds)."""
    started = time.monotonic()
    done = lab.controller([LABCTL, *args, "--json"], timeout=timeout)
    seconds = time.monotonic() - started
    try:
        document = json.loads(done.stdout)
    except ValueError:
        raise AssertionError(f"labctl {args} printed no JSON (rc {done.returncode}):\n{done.stdout[-2000:]}\n"
                             f"{done.stderr[-3000:]}") from None
    return done.returncode, document, done.stderr, seconds


def invocations(lab) -> dict[str, str]:  # type: ignore[no-untyped-def]
    out = {}
    for host, units in UNITS.items():
        for unit in units:
            done = lab.machines[host].user_systemctl("show", "-p", "InvocationID,ActiveState", unit)
            facts = dict(line.split("=", 1) for line in done.stdout.strip().splitlines() if "=" in line)
            assert facts.get("ActiveState") == "active", f"{host} {unit}: {facts}"
            out[f"{host}/{unit}"] = facts["InvocationID"]
    return out


def edge_python(lab, code: str, timeout: float = 120) -> Any:  # type: ignore[no-untyped-def]
    """Run ``code`` with python3 on edge as labuser; it prints one JSON document."""
    done = lab.machines["edge"].run(["python3", "-c", code], user="labuser", timeout=timeout, check=False)
    assert done.rc == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


ASK = r'''
import json, sys, urllib.request, urllib.error
def env(path, var):
    for line in open(path):
        if line.startswith(var + "="):
            return line.split("=", 1)[1].strip()
def ask(url, key=None, body=None, timeout=60):
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body else None,
                                 headers={"Content-Type": "application/json", **({"Authorization": "Bearer " + key} if key else {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)
    except OSError as e:
        return 0, repr(e), {}
MASTER = env("/home/labuser/.config/labctl/secrets/litellm.env", "LITELLM_MASTER_KEY")
'''


def test_up_across_three_hosts_and_every_route_answers(fleet) -> None:  # type: ignore[no-untyped-def]
    lab, inventory = fleet
    rc, report, err, seconds = labctl(lab, "up", "-i", str(inventory))
    assert rc == 0, json.dumps(report, indent=1)[-3000:] + err[-3000:]
    assert report["ok"] and set(report["hosts"]) == {"gpu-a", "gpu-b", "edge"}
    for host, result in report["hosts"].items():
        assert result["status"] == "ok" and result["report"]["changed"], (host, result)
    print(f"\nfleet up (first, three hosts): {seconds:.1f}s")
    # piped (stderr under --json), each host says what it does as it goes, with the elapsed time
    for host in ("gpu-a", "gpu-b", "edge"):
        assert re.search(rf"^{host}: labctl up: done \(\d+s\)$", err, re.M), err[-3000:]
        assert re.search(rf"^{host}: pip install .*: changed \(\d+s\)$", err, re.M), err[-3000:]
    answers = edge_python(lab, ASK + r'''
out = {}
for route in ("chat-a", "chat-b"):
    status, body, headers = ask("http://127.0.0.1:4000/v1/completions", MASTER,
                                {"model": route, "prompt": "Hello", "max_tokens": 4})
    out[route] = [status, headers.get("x-litellm-model-api-base") or headers.get("x-litellm-model-group"), body[:200]]
print(json.dumps(out))
''')
    for route, (status, served_by, body) in answers.items():
        assert status == 200, (route, body)
    # Each route reached its own host's backend, over the private network.
    assert lab.address["gpu-a"] in json.dumps(answers["chat-a"]) or answers["chat-a"][1] == "chat-a"


#: What a llama-server's --api-key covers, on every build labctl supports (docs/fleet.md,
#: "What a backend's key covers"): everything that runs the model, shows its prompts or
#: settings, or changes its state. Only health and the model list answer without the key on
#: the PyPI wheels' builds (0.10068.0 and 0.10434.0); older builds (the source build bootstrap
#: makes on CPUs the wheel cannot serve) want the key for the model list too.
KEYED_ENDPOINTS = [("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("POST", "/completion"),
                   ("POST", "/v1/embeddings"), ("POST", "/tokenize"), ("POST", "/detokenize"), ("GET", "/props"),
                   ("GET", "/slots"), ("GET", "/metrics")]
OPEN_ON_SOME_BUILDS = [("GET", "/v1/models"), ("GET", "/models")]


def test_a_backend_refuses_another_host_without_its_key(fleet) -> None:  # type: ignore[no-untyped-def]
    lab, inventory = fleet
    a = lab.address["gpu-a"]
    endpoints = KEYED_ENDPOINTS + OPEN_ON_SOME_BUILDS
    results = edge_python(lab, ASK + f'''
key = env("/home/labuser/.config/labctl/secrets/api-keys/llama-a.env", "LABCTL_API_KEY_LLAMA_A")
body = {{"prompt": "Hi", "max_tokens": 1, "n_predict": 1, "content": "Hi", "tokens": [1], "input": "Hi",
        "messages": [{{"role": "user", "content": "Hi"}}]}}
out = {{"health": ask("http://{a}:8080/health")[0], "models with key": ask("http://{a}:8080/v1/models", key)[0],
       "completion with key": ask("http://{a}:8080/v1/completions", key, body)[0]}}
for method, path in {endpoints!r}:
    data = body if method == "POST" else None
    out[method + " " + path] = [ask("http://{a}:8080" + path, None, data)[0],
                                ask("http://{a}:8080" + path, "sk-not-the-key", data)[0]]
print(json.dumps(out))
''')
    assert (results.pop("health"), results.pop("models with key"), results.pop("completion with key")) == (200, 200, 200)
    for method, path in KEYED_ENDPOINTS:
        assert results[f"{method} {path}"] == [401, 401], (method, path, results)
    for method, path in OPEN_ON_SOME_BUILDS:
        # Either way, the same answer without a key and with a wrong one: the key decides nothing else.
        no_key, wrong_key = results[f"{method} {path}"]
        assert no_key == wrong_key and no_key in (200, 401), (method, path, results)
    # From the controller too (another host of the network): a completion without the key is refused.
    done = lab.controller(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "10", "-H",
                           "Content-Type: application/json", "-d", '{"prompt": "Hi", "max_tokens": 1}',
                           f"http://{a}:8080/v1/completions"], timeout=30)
    assert done.stdout == "401"
    # Loopback on gpu-a is not where it listens: the backend binds its private address only.
    done = lab.machines["gpu-a"].run(["ss", "-Htln"], timeout=30)
    listeners = [line.split()[3] for line in done.stdout.splitlines()]
    assert f"{a}:8080" in listeners and not any(l.endswith(":8080") and l != f"{a}:8080" for l in listeners)
    # The key file is 0600 on both ends, and in no unit's text.
    for host in ("gpu-a", "edge"):
        mode = lab.machines[host].run(["stat", "-c", "%a %U", "/home/labuser/.config/labctl/secrets/api-keys/llama-a.env"])
        assert mode.stdout.strip() == "600 labuser", (host, mode.stdout)
    unit = lab.machines["gpu-a"].run(["cat", "/home/labuser/.config/systemd/user/labctl-llama-a.service"]).stdout
    key = lab.machines["gpu-a"].run(["cat", "/home/labuser/.config/labctl/secrets/api-keys/llama-a.env"]).stdout
    assert key.split("=", 1)[1].strip() not in unit


def test_a_second_up_restarts_nothing_anywhere(fleet) -> None:  # type: ignore[no-untyped-def]
    lab, inventory = fleet
    before = invocations(lab)
    rc, report, err, seconds = labctl(lab, "up", "-i", str(inventory))
    assert rc == 0, err[-3000:]
    for host, result in report["hosts"].items():
        assert result["status"] == "ok" and result["report"]["changed"] is False, (host, result["report"])
        assert result["report"]["restarted"] == []
    assert invocations(lab) == before
    print(f"\nfleet up (second, no changes): {seconds:.1f}s")


def test_status_across_the_fleet(fleet) -> None:  # type: ignore[no-untyped-def]
    lab, inventory = fleet
    rc, report, err, seconds = labctl(lab, "status", "-i", str(inventory))
    assert rc == 0, json.dumps(report)[-3000:] + err[-2000:]
    services = {(h, s["service"]): s for h, r in report["hosts"].items() for s in r["report"]["services"]}
    assert {k for k in services} == {("gpu-a", "llama-a"), ("gpu-b", "llama-b"), ("edge", "gateway"),
                                     ("edge", "llama-a"), ("edge", "llama-b")}
    assert all(s["healthy"] for s in services.values())
    # The text form fits 80 columns and names each host.
    text = lab.controller([LABCTL, "status", "-i", str(inventory)], env={"COLUMNS": "80"}, timeout=300)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    assert all(any(line.startswith(h) for line in lines) for h in ("gpu-a", "gpu-b", "edge")), lines
    print(f"\nfleet status: {seconds:.1f}s")


LOAD = ASK + r'''
import threading, time
deadline = time.monotonic() + float(sys.argv[1])
results, lock = [], threading.Lock()
def worker():
    while time.monotonic() < deadline:
        t0 = time.monotonic()
        status, body, headers = ask("http://127.0.0.1:4000/v1/completions", MASTER,
                                    {"model": "chat-a", "prompt": "Hello", "max_tokens": 8}, timeout=120)
        with lock:
            results.append([status, round(time.monotonic() - t0, 3), headers.get("x-litellm-model-group", ""),
                            headers.get("x-litellm-attempted-fallbacks", ""), body[:160] if status != 200 else ""])
threads = [threading.Thread(target=worker) for _ in range(3)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(results))
'''


def evidence(lab, host: str, unit: str) -> str:  # type: ignore[no-untyped-def]
    """What a failed assertion shows of ``unit`` on ``host``: its state and its last journal lines."""
    machine = lab.machines[host]
    if not machine.running:
        return f"{host} is not running"
    show = machine.user_systemctl("show", "-p", "ActiveState,SubState,Result,NRestarts,ExecMainStatus,InvocationID",
                                  unit).stdout
    journal = machine.run(["journalctl", "--user", "-u", unit, "-n", "40", "--no-pager", "-o", "short-monotonic"],
                          user="labuser", check=False).stdout
    return f"\n--- {host} {unit}\n{show}\n{journal}"


@pytest.fixture
def gpu_a_back_on(fleet):  # type: ignore[no-untyped-def]
    """Whatever the test's outcome, gpu-a runs again after it, so that the tests after it
    check the fleet, not the aftermath of this one's failure."""
    yield
    lab, _inventory = fleet
    if not lab.machines["gpu-a"].running:
        lab.power_on("gpu-a")


def test_a_backend_host_powered_off_mid_load(fleet, gpu_a_back_on) -> None:  # type: ignore[no-untyped-def]
    lab, inventory = fleet
    healthy_before = {k: v for k, v in invocations(lab).items() if not k.startswith("gpu-a/")}
    load: dict[str, Any] = {}

    def run_load() -> None:
        done = lab.machines["edge"].run(["python3", "-c", LOAD, "25"], user="labuser", timeout=300, check=False)
        load["rc"], load["out"], load["err"] = done.rc, done.stdout, done.stderr

    worker = threading.Thread(target=run_load)
    worker.start()
    time.sleep(8)
    t0 = time.monotonic()
    lab.power_off("gpu-a")
    power_off = time.monotonic() - t0
    worker.join(timeout=400)
    assert load.get("rc") == 0, load.get("err", "")[-2000:]
    results = json.loads(load["out"])
    failed = [r for r in results if r[0] != 200]
    fell_back = [r for r in results if r[3] not in ("", "0")]
    worst = max(r[1] for r in results)
    print(f"\npower-off mid-load: {len(results)} requests, {len(failed)} failed, {len(fell_back)} through the "
          f"fallback, worst {worst:.2f}s; poweroff took {power_off:.1f}s")
    assert len(results) >= 10 and not failed, (failed[:5], evidence(lab, "edge", "labctl-gateway.service"),
                                               evidence(lab, "gpu-b", "labctl-llama-b.service"))
    assert fell_back, "no request fell back: gpu-a was not down during the load"

    # status names the dead host, within its bounds (connect 5 s + status 30 s + start-up)
    rc, report, err, seconds = labctl(lab, "status", "-i", str(inventory), timeout=300)
    assert rc == 4, (rc, err[-2000:])
    assert report["hosts"]["gpu-a"]["status"] == "unreachable", report["hosts"]["gpu-a"]
    assert report["hosts"]["gpu-b"]["status"] == "ok" and report["hosts"]["edge"]["status"] == "ok"
    assert f"host gpu-a ({lab.address['gpu-a']}): unreachable" in err
    assert seconds < 5 + 30 + 30, seconds
    print(f"status with gpu-a down: {seconds:.1f}s to name it")

    # gpu-a back (a fresh machine: its state is gone) and up again: converges, and nothing
    # restarts on the hosts that stayed healthy.
    lab.power_on("gpu-a")
    rc, report, err, seconds = labctl(lab, "up", "-i", str(inventory))
    assert rc == 0, json.dumps(report)[-3000:] + err[-3000:]
    assert report["hosts"]["gpu-a"]["report"]["changed"] is True
    for host in ("gpu-b", "edge"):
        assert report["hosts"][host]["report"]["restarted"] == [], (host, report["hosts"][host]["report"])
    after = invocations(lab)
    assert {k: v for k, v in after.items() if not k.startswith("gpu-a/")} == healthy_before
    print(f"fleet up after gpu-a came back: {seconds:.1f}s")
    answer = edge_python(lab, ASK + r'''
print(json.dumps(ask("http://127.0.0.1:4000/v1/completions", MASTER, {"model": "chat-a", "prompt": "Hi", "max_tokens": 2})[:2]))
''')
    assert answer[0] == 200


def test_testinfra_reaches_every_host_through_the_ansible_inventory(fleet) -> None:  # type: ignore[no-untyped-def]
    """The checks an operator's CI would run against the fleet, with testinfra's ansible://
    backend reading the Ansible inventory `labctl up` wrote (run in the controller namespace)."""
    lab, inventory = fleet
    state = Path(yaml.safe_load(inventory.read_text())["fleet"]["state_dir"])
    hosts_yml = state / "run-up" / "hosts.yml"
    assert hosts_yml.is_file()
    done = lab.controller(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(Path(__file__).with_name("fleet_infra_checks.py")),
         "--hosts", "ansible://all", "--ansible-inventory", str(hosts_yml), "--ssh-identity-file", str(lab.ssh_key)],
        env={"ANSIBLE_SSH_COMMON_ARGS": f"-o UserKnownHostsFile={state / 'known_hosts'} -o StrictHostKeyChecking=yes "
                                        "-o BatchMode=yes",
             "ANSIBLE_HOME": str(state / "ansible"), "PYTHONWARNINGS": "ignore",
             # testinfra runs ansible-inventory by name: the one beside this Python
             "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"},
        timeout=600, cwd=str(ROOT))
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "15 passed" in summary, summary  # 5 checks on each of 3 hosts
    print(f"\ntestinfra over the fleet: {summary}")


def test_down_stops_every_host_gateways_first(fleet) -> None:  # type: ignore[no-untyped-def]
    lab, inventory = fleet
    rc, report, err, seconds = labctl(lab, "down", "-i", str(inventory))
    assert rc == 0, json.dumps(report)[-3000:] + err[-2000:]
    assert report["action"] == "down" and all(r["status"] == "ok" for r in report["hosts"].values())
    for host, units in UNITS.items():
        for unit in units:
            state = lab.machines[host].user_systemctl("is-active", unit, check=False).stdout.strip()
            assert state in ("inactive", "failed"), (host, unit, state)
    print(f"\nfleet down: {seconds:.1f}s")
