"""``python -m service`` and the ``gatebeat`` command: run the gatebeat CLI."""

import sys

from service.stop_signals import install_early


def entry() -> int:
    """Take over stop signals first (before the CLI's imports), then run the CLI."""
    install_early()
    from service.cli import main

    return main()


if __name__ == "__main__":
    sys.exit(entry())
