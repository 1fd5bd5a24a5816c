"""``python -m savlens.demo [options]``: ``savlens demo [options]``; with ``--check``: ``savlens check``.

An entry point: it imports the command line, which imports the demo library (never the other way round).
"""

import sys

from savlens.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    """Run ``savlens demo`` (or ``savlens check`` with ``--check``) on ``argv`` (default ``sys.argv[1:]``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--check" in args:
        args.remove("--check")
        return cli_main(["check", *args], prog="python -m savlens.demo --check")
    return cli_main(["demo", *args], prog="python -m savlens.demo")


if __name__ == "__main__":
    raise SystemExit(main())
