"""User-facing errors: the CLI prints them as one line and exits non-zero."""

from __future__ import annotations

from pathlib import Path


class RecflError(Exception):
    """A mistake the user can fix (bad path, bad file, bad option); no traceback."""

    exit_code = 2


class EnvironmentFault(RecflError):
    """The machine, not the user, stops the work (disk full, permission denied, a broker refusing writes)."""

    exit_code = 1


class DataFormatError(RecflError):
    """A data file that does not match its declared format, with file and line."""

    def __init__(self, path: str | Path, message: str, line: int | None = None):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.line = line
