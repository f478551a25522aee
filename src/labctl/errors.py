"""One exception hierarchy; the CLI maps it to exit codes in one place (cli.main).

Exit codes (stable, documented in docs/cli.md):
  0 success, 1 unexpected internal error, 2 bad input, 3 host not ready (pre-flight),
  4 an operation failed on the host, 5 another labctl run holds the lock.
"""

from __future__ import annotations


class LabctlError(Exception):
    """A failure that labctl explains to the operator in one line per problem."""

    exit_code = 4
    # Whether the lines are redacted where they are made, part by part (an input error's path
    # and message): the CLI then prints them as they are, since redacting a whole composed
    # line would read "password: unknown key" as a secret-named pair.
    redacted = False

    def lines(self) -> list[str]:
        return [f"labctl: {self}"]

    def as_dicts(self) -> list[dict[str, object]]:
        return [{"message": str(self)}]


class InputError(LabctlError):
    """Something in an input file is wrong: ``file:line: dotted.path: message``.

    The path and message are redacted here, where every such line is made: they quote the
    operator's keys and values (``no service named 'X'``, pydantic's echo of an input), and
    whatever reads the error (the CLI, doctor, a fleet's report) then never sees a secret."""

    exit_code = 2
    redacted = True

    def __init__(self, file: str, line: int, path: str, message: str) -> None:
        from labctl.secretscan import redact  # compiles its patterns: imported by the errors that redact

        path, message = redact(path), redact(message)
        self.file, self.line, self.path, self.message = file, line, path, message
        super().__init__(f"{file}:{line}: {path}: {message}")

    def lines(self) -> list[str]:
        return [str(self)]

    def as_dicts(self) -> list[dict[str, object]]:
        return [{"file": self.file, "line": self.line, "path": self.path, "message": self.message}]


class InvalidInventory(LabctlError):
    """Several InputErrors found in one pass; each is printed on its own line."""

    exit_code = 2
    redacted = True

    def __init__(self, errors: list[InputError]) -> None:
        self.errors = sorted(errors, key=lambda e: (e.line, e.path, e.message))
        super().__init__("\n".join(str(e) for e in self.errors))

    def lines(self) -> list[str]:
        return [str(e) for e in self.errors]

    def as_dicts(self) -> list[dict[str, object]]:
        return [d for e in self.errors for d in e.as_dicts()]


class UsageError(LabctlError):
    """A command-line argument is wrong (not an inventory problem)."""

    exit_code = 2


class HostNotReady(LabctlError):
    """Pre-flight found the host unable to run the stack; nothing was changed."""

    exit_code = 3


class OperationFailed(LabctlError):
    """A step on the host failed (systemctl, a probe deadline, docker compose...)."""

    exit_code = 4


class MultiLineFailure(OperationFailed):
    """An operation failure whose first line says what failed and why, followed by
    evidence (journal lines) indented with ``  | ``."""

    def __init__(self, lines: list[str]) -> None:
        self._lines = list(lines)
        super().__init__("\n".join(self._lines))

    def lines(self) -> list[str]:
        return ["labctl: " + self._lines[0], *self._lines[1:]]


class HostIOError(OperationFailed):
    """The host refused a file operation: ``PATH: reason`` (ENOSPC, EROFS, EACCES...)."""

    @classmethod
    def of(cls, exc: OSError) -> "HostIOError":
        reason = os_reason(exc)
        where = exc.filename if exc.filename is not None else "(file)"
        return cls(f"{where}: {reason}")


class LockBusy(LabctlError):
    """Another labctl run is mutating this host."""

    exit_code = 5


def os_reason(exc: OSError) -> str:
    """An OSError's reason as one lower-case phrase ("no space left on device"): the
    errno's text, never the exception's repr (which repeats the path and its bytes)."""
    import os

    return os.strerror(exc.errno).lower() if exc.errno else str(exc)
