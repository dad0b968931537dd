"""The ``gatebeat`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from service import __version__

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gatebeat",
        description="Heartbeats and polls for Modbus and serial devices, exported to Prometheus.",
    )
    parser.add_argument("--version", action="version", version=f"gatebeat {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
