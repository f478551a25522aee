"""A STAND-IN FOR GRAFANA, used only by labctl's integration tests. It is not Grafana.

Grafana cannot be obtained on the machines the tests run on, so the image
``labctl-test/grafana-standin`` runs this in the rendered compose file's ``grafana``
service. It checks, at start, what that file hands Grafana, and exits 1 with one line on
stderr when something is wrong (the container then never turns healthy and
``compose up --wait`` fails, as it would for a Grafana that does not start):

* ``GF_SECURITY_ADMIN_PASSWORD__FILE`` names a file that exists and is not empty, and
  ``GF_SECURITY_ADMIN_PASSWORD`` (a password in the environment) is not set;
* ``GF_SECURITY_ADMIN_USER`` and ``GF_SERVER_HTTP_PORT`` are set;
* the provisioning tree has a datasource file and a dashboard provider, and every
  dashboard in the provider's path is valid JSON.

It then serves ``GET /api/health`` on ``GF_SERVER_HTTP_ADDR:GF_SERVER_HTTP_PORT`` like
Grafana (``{"database": "ok", ...}``), plus a ``labctl_standin`` object for the tests:
the SHA-256 of the password it read (so a test can tell it got the file labctl wrote
without the value ever leaving the host), whether uid 472 (the user the real Grafana
image runs as) could read that file, and whether each provisioned datasource URL answers.

Standard library only: the image's Python is Debian's python3.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PROVISIONING = Path("/etc/grafana/provisioning")
GRAFANA_UID = 472  # the real grafana/grafana image's user
VERSION = "0.0.0-labctl-standin"


def fail(message: str) -> None:
    sys.stderr.write(f"grafana-standin: {message}\n")
    sys.exit(1)


def yaml_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def check() -> dict[str, object]:
    env = os.environ
    if env.get("GF_SECURITY_ADMIN_PASSWORD"):
        fail("GF_SECURITY_ADMIN_PASSWORD is set: the password must come from a file, not the environment")
    for name in ("GF_SECURITY_ADMIN_USER", "GF_SERVER_HTTP_PORT", "GF_SECURITY_ADMIN_PASSWORD__FILE"):
        if not env.get(name):
            fail(f"{name} is not set")
    secret = Path(env["GF_SECURITY_ADMIN_PASSWORD__FILE"])
    try:
        password = secret.read_text(encoding="utf-8").strip()
    except OSError as exc:
        fail(f"cannot read the admin password file {secret}: {exc.strerror}")
    if not password:
        fail(f"the admin password file {secret} is empty")
    as_grafana = subprocess.run(["cat", str(secret)], user=GRAFANA_UID, group=0, extra_groups=[],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)

    datasources = yaml_files(PROVISIONING / "datasources")
    providers = yaml_files(PROVISIONING / "dashboards")
    if not datasources:
        fail(f"no datasource file in {PROVISIONING / 'datasources'}")
    if not providers:
        fail(f"no dashboard provider in {PROVISIONING / 'dashboards'}")
    urls = [m.group(1) for p in datasources
            for m in re.finditer(r'^\s*url:\s*"?([^"\s]+)"?\s*$', p.read_text(), re.M)]
    dashboards: list[str] = []
    for provider in providers:
        for m in re.finditer(r'^\s*path:\s*"?([^"\s]+)"?\s*$', provider.read_text(), re.M):
            folder = Path(m.group(1))
            files = sorted(folder.glob("*.json"))
            if not files:
                fail(f"{provider.name}: no dashboards in {folder}")
            for f in files:
                try:
                    json.loads(f.read_text())
                except ValueError as exc:
                    fail(f"{f}: not valid JSON: {exc}")
                dashboards.append(str(f))
    return {
        "admin_user": env["GF_SECURITY_ADMIN_USER"],
        "admin_password_sha256": hashlib.sha256(password.encode()).hexdigest(),
        "admin_password_readable_by_uid_472": as_grafana.returncode == 0,
        "datasource_urls": urls,
        "dashboards": dashboards,
    }


def probe(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url.rstrip("/") + "/-/ready", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def main() -> None:
    info = check()
    addr = os.environ.get("GF_SERVER_HTTP_ADDR") or "0.0.0.0"
    port = int(os.environ["GF_SERVER_HTTP_PORT"])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path.split("?")[0] != "/api/health":
                self.send_error(404)
                return
            body = json.dumps({
                "database": "ok", "version": VERSION, "commit": "labctl-standin",
                "labctl_standin": {**info, "datasources_ready": {u: probe(u) for u in info["datasource_urls"]}},
            }).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer((addr, port), Handler)
    # PID 1 in a container ignores SIGTERM without a handler: `docker stop` would wait 10 s.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.stderr.write(f"grafana-standin: serving /api/health on {addr}:{port} (a stand-in, not Grafana)\n")
    server.serve_forever()


if __name__ == "__main__":
    main()
