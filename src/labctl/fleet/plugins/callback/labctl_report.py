# labctl's Ansible callback (labctl.fleet.ansible enables it for its own runs): one JSON
# document per run, per host: how each task ended, and the stdout/stderr of the task that
# ran labctl there (its --json report). Written to $LABCTL_ANSIBLE_REPORT when the run ends.
# As the run goes, one JSON line per task started and ended on a host is appended to
# $LABCTL_ANSIBLE_EVENTS (host, task, event, changed: no task output, no message), which the
# controller reads for its progress lines. Tasks marked no_log arrive censored; nothing here
# prints.
from __future__ import annotations

import json
import os
import tempfile

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: labctl_report
    type: aggregate
    short_description: per-host results of a labctl fleet run, as JSON
    description:
        - Writes how every task ended on every host, and the output of the task that ran labctl, to the
          file named by LABCTL_ANSIBLE_REPORT.
    requirements:
        - enabled by labctl for its own runs
"""

# Output kept of the task that ran labctl: its --json report in full, the end of stderr.
STDOUT_MAX = 4 * 1024 * 1024
STDERR_TAIL = 4000


def _parts(result):
    """(host name, task name, result dict), on ansible-core 2.19+ and before."""
    host = getattr(result, "host", None) or result._host
    task = getattr(result, "task", None) or result._task
    data = getattr(result, "result", None)
    if data is None:
        data = result._result
    return host.get_name(), task.get_name(), data


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "labctl_report"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.hosts = {}
        path = os.environ.get("LABCTL_ANSIBLE_EVENTS")
        # owner-only, as every file of the run (host and task names only, but in its directory)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        self.events = os.fdopen(os.open(path, flags, 0o600), "a", encoding="utf-8") if path else None

    def _event(self, host, task, event, changed=False):
        if self.events is None:
            return
        self.events.write(json.dumps({"host": host, "task": task, "event": event, "changed": changed}) + "\n")
        self.events.flush()

    def v2_runner_on_start(self, host, task):
        self._event(host.get_name(), task.get_name(), "start")

    def _record(self, result, status):
        host, task, data = _parts(result)
        entry = self.hosts.setdefault(host, {"status": "ok", "tasks": [], "labctl": None})
        item = {"task": task, "status": status, "changed": bool(data.get("changed"))}
        if "rc" in data:
            item["rc"] = data.get("rc")
        msg = data.get("msg")
        if msg and status != "ok":
            item["msg"] = str(msg)[:2000]
        entry["tasks"].append(item)
        self._event(host, task, status, item["changed"])
        if task.startswith("labctl ") and status in ("ok", "failed") and "stdout" in data:
            entry["labctl"] = {"task": task, "rc": data.get("rc"),
                               "stdout": str(data.get("stdout", ""))[:STDOUT_MAX],
                               "stderr": str(data.get("stderr", ""))[-STDERR_TAIL:]}
        rank = {"ok": 0, "skipped": 0, "failed": 1, "unreachable": 2}
        if rank[status] > rank.get(entry["status"], 0):
            entry["status"] = status
            entry["error"] = item.get("msg") or f"{task} failed"

    def v2_runner_on_ok(self, result):
        self._record(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, "ok" if ignore_errors else "failed")

    def v2_runner_on_unreachable(self, result):
        self._record(result, "unreachable")

    def v2_runner_on_skipped(self, result):
        self._record(result, "skipped")

    def v2_playbook_on_stats(self, stats):
        path = os.environ.get("LABCTL_ANSIBLE_REPORT")
        if not path:
            return
        directory = os.path.dirname(path) or "."
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".report-")
        with os.fdopen(fd, "w") as out:
            json.dump({"hosts": self.hosts}, out)
        os.replace(tmp, path)
        if self.events is not None:
            self.events.close()
            self.events = None
