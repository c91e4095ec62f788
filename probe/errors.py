"""The program's own exceptions (measured network failures are data, never exceptions).

    ProbeError                 anything the user must be told about, then exit
    ├── CatalogError           a catalog that cannot be used: carries every problem found
    ├── ResultFileError        a saved run that cannot be read, or a file we may not overwrite
    └── CodecError             bytes a sans-I/O codec cannot make sense of (wire/*)
"""

from __future__ import annotations

from dataclasses import dataclass


class ProbeError(Exception):
    """Something the user must be told about; the CLI prints it without a traceback."""

    exit_code = 2


@dataclass(frozen=True)
class CatalogProblem:
    """One error in a catalog, located as file:line:col (1-based) and a dotted field path."""

    file: str
    line: int
    col: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.file}:{self.line}:{self.col}: {where}{self.message}"


class CatalogError(ProbeError):
    """A catalog with one or more errors; it is refused as a whole."""

    def __init__(self, problems: list[CatalogProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class ResultFileError(ProbeError):
    """A result file that cannot be read or written as asked."""


class CodecError(ProbeError, ValueError):
    """Bytes that a wire codec cannot decode."""
