"""``python -m service`` and the ``gatebeat`` command: run the gatebeat CLI."""

import sys

from service.stop_signals import StopBeforeStart, install_early

_LONG_RUNNING = ("run", "demo")


def entry() -> int:
    """Take over stop signals first (before the CLI's imports), then run the CLI.

    A stop signal during those imports (pydantic, pymodbus: about 0.3 s) ends here the way
    :func:`service.cli.main` ends one during the config load: ``run`` and ``demo`` exit 0 with
    a line on stderr, other commands with 128 + the signal number.
    """
    install_early()
    try:
        from service.cli import main

        return main()
    except StopBeforeStart as exc:
        command = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), "")
        if command in _LONG_RUNNING:
            print(
                f"gatebeat: received {exc.name} during start-up: exiting, nothing was running",
                file=sys.stderr,
            )
            return 0
        return 128 + exc.signum


if __name__ == "__main__":
    sys.exit(entry())
