"""The `probe` command and `python -m probe`: start the CLI, quiet on Ctrl-C even while it loads."""

import sys


def main() -> None:
    try:
        from probe.cli import main as cli_main  # typer, rich, pydantic: a few hundred ms to load
    except KeyboardInterrupt:  # nothing has run yet, so nothing to keep: no traceback either
        sys.stderr.write("probe: interrupted\n")
        raise SystemExit(130) from None
    cli_main()


if __name__ == "__main__":
    main()
