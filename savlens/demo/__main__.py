"""``python -m savlens.demo [options]``: ``savlens demo [options]``; with ``--check``: ``savlens check``."""

from savlens.demo import main

if __name__ == "__main__":
    raise SystemExit(main())
