"""The `probe` command and `python -m probe`: start the CLI, quiet on Ctrl-C even while it loads."""

import sys


def main() -> None:
    try:
        from probe.cli import app  # typer, rich, pydantic: a few hundred ms to load

        app()
    except KeyboardInterrupt:  # while loading, or before a run installed its own handler:
        sys.stderr.write("probe: interrupted\n")  # nothing to keep, and no traceback
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
