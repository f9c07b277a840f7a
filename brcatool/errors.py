"""One exception family so the CLI can turn any expected failure into one readable line."""

from __future__ import annotations

from pathlib import Path

_WORKER_TRACE = "Original Traceback (most recent call last)"


class BrcaError(Exception):
    """An expected failure caused by input or state, not by a bug.

    ``path`` names the file at fault and ``fix`` tells the user what to do; the CLI prints
    ``<path>: <message> (fix: <fix>)`` in red and exits 1, without a traceback.
    """

    def __init__(self, message: str, *, path: str | Path | None = None, fix: str | None = None):
        if path is None and fix is None and _WORKER_TRACE in message:
            # re-raised by torch's DataLoader from a worker process as type(message-with-traceback):
            # keep the original one line (the traceback's last line, after the class name)
            last = message.rstrip().splitlines()[-1]
            message = last.split(": ", 1)[1] if ": " in last else last
            if message.endswith(")") and " (fix: " in message:  # keep the fix apart, as raised
                message, _, fix = message.rpartition(" (fix: ")
                fix = fix[:-1]
        self.message = message
        self.path = str(path) if path is not None else None
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        if self.fix:
            text += f" (fix: {self.fix})"
        return " ".join(text.split())


class InputError(BrcaError):
    """A user-supplied file or option is invalid."""


class ArtifactError(BrcaError):
    """An artifact in the workdir is missing, stale, of another schema or made with other parameters."""


class OfflineError(BrcaError):
    """Something had to be downloaded and could not be."""


class NotBuiltError(BrcaError):
    """A stage that is declared but not implemented yet (exit code 2)."""
