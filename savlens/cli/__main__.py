"""``python -m savlens.cli``: the ``savlens`` command."""

from savlens.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
