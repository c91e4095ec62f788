"""The program's own exceptions and exit codes (measured network failures are data, never
exceptions).

    ProbeError                 anything the user must be told about in one line, then exit
    ├── UsageError             a command line that cannot be run as given (exit 2)
    ├── CatalogError           a catalog that cannot be used: carries every problem found (2)
    ├── ResultFileError        a saved run that cannot be read (2)
    ├── HistoryError           a history store that cannot be used (2)
    ├── OutputError            an output that cannot be written (74)
    └── CodecError             bytes a sans-I/O codec cannot make sense of (wire/*)

The CLI exits with `ProbeError.exit_code`; anything else that escapes is a bug in the probe:
one line on stderr, exit EXIT_INTERNAL (70), never 1, which scripts read as "blocked".
"""

from __future__ import annotations

from dataclasses import dataclass

# Exit codes (README "Exit codes"). 64-78 follow sysexits.h where one fits.
EXIT_OK = 0  # every target ok
EXIT_PROBLEM = 1  # something degraded or blocked (--fail-on tunes this)
EXIT_USAGE = 2  # usage, catalog or input file error
EXIT_INCONCLUSIVE = 3  # the controls failed: no network, or a captive portal
EXIT_INTERNAL = 70  # EX_SOFTWARE: a bug in the probe
EXIT_OUTPUT = 74  # EX_IOERR: a result could not be written (the report still went to stdout)
EXIT_SIGNAL = {2: 130, 15: 143}  # SIGINT, SIGTERM: results so far are written


class ProbeError(Exception):
    """Something the user must be told about; the CLI prints it without a traceback."""

    exit_code = EXIT_USAGE


class UsageError(ProbeError):
    """A command line that cannot be run as given."""


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
    """A result file that cannot be read, or a file we may not overwrite."""


class HistoryError(ProbeError):
    """The history store cannot be opened, read or written (locked, damaged, another's)."""


class OutputError(ProbeError):
    """An output file that cannot be written; the run itself was measured and reported."""

    exit_code = EXIT_OUTPUT


class CodecError(ProbeError, ValueError):
    """Bytes that a wire codec cannot decode."""
