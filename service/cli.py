"""The ``gatebeat`` command line.

Commands: ``run``, ``check-config``, ``drivers``, ``sample-config DRIVER``, ``demo``,
``events``.

Exit codes:
    0  success (``run``: a clean shutdown after SIGTERM, SIGINT or SIGHUP, also one that
       arrives during start-up).
    1  runtime failure (the service failed after it started).
    2  configuration or usage problem: every problem is printed, one per line; nothing started.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from service import __version__
from service.registry import DriverError, Registry, discover
from service.stop_signals import StopBeforeStart

__all__ = ["EXIT_CONFIG", "EXIT_OK", "EXIT_RUNTIME", "build_parser", "main"]

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_CONFIG = 2

log = logging.getLogger("gatebeat.cli")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``gatebeat`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="gatebeat",
        description="Heartbeats and polls for Modbus and serial devices, exported to Prometheus.",
        epilog="Exit codes: 0 ok, 1 runtime failure, 2 configuration problems.",
    )
    parser.add_argument("--version", action="version", version=f"gatebeat {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    config_help = "the TOML config file (default: $GATEBEAT_CONFIG)"
    run = commands.add_parser("run", help="run the configured devices and the exporter")
    run.add_argument("--config", metavar="PATH", help=config_help)

    check = commands.add_parser(
        "check-config", help="validate the config; exit 0, or 2 with every problem listed"
    )
    check.add_argument("--config", metavar="PATH", help=config_help)

    drivers = commands.add_parser("drivers", help="list the available drivers and their origin")
    drivers_config_help = (
        "also search this config's runtime.driver_dirs (default: $GATEBEAT_CONFIG; "
        "GATEBEAT_RUNTIME__DRIVER_DIRS overrides the key, as for run)"
    )
    drivers.add_argument("--config", metavar="PATH", help=drivers_config_help)
    drivers.add_argument(
        "--driver-dir", metavar="DIR", action="append", default=[], help="extra driver directory"
    )

    sample = commands.add_parser("sample-config", help="print a commented sample config for DRIVER")
    sample.add_argument("driver", metavar="DRIVER")
    sample.add_argument("--config", metavar="PATH", help=drivers_config_help)
    sample.add_argument(
        "--driver-dir", metavar="DIR", action="append", default=[], help="extra driver directory"
    )

    demo = commands.add_parser(
        "demo", help="run simulated devices and gatebeat against them (no hardware needed)"
    )
    demo.add_argument(
        "--listen", metavar="HOST:PORT", default="127.0.0.1:9810", help="exporter address"
    )

    events = commands.add_parser("events", help="print the event journal (runtime.journal)")
    source = events.add_mutually_exclusive_group()
    source.add_argument("--config", metavar="PATH", help="read runtime.journal from this config")
    source.add_argument("--journal", metavar="PATH", help="the journal file itself")
    events.add_argument("--device", metavar="NAME", help="only this device's events")
    events.add_argument(
        "--since", metavar="DURATION", help="only events newer than this ('1h', '30m', '90s')"
    )
    events.add_argument("--limit", type=int, default=1000, help="at most this many (newest)")
    events.add_argument("--json", action="store_true", help="one JSON object per line")
    return parser


def _events(args: argparse.Namespace, *, out: TextIO, err: TextIO) -> int:
    import json
    import time

    from service.intervals import parse_duration
    from service.journal import JournalError, read_events

    path = args.journal
    given = "--journal"  # what the user gave, for messages
    if path is None:
        from service.settings import ConfigError, load_settings

        try:
            settings = load_settings(args.config)
        except ConfigError as exc:
            return _problems(exc.problems, out=out, err=err, what="config refused")
        path = settings.runtime.journal
        given = f"runtime.journal of {settings.source}" if settings.source else "runtime.journal"
        if path is None:
            return _problems(
                ["runtime.journal: not set, so there is no event journal to read"],
                out=err,
                err=err,
                what="no journal",
            )
    try:
        since = parse_duration(args.since) if args.since else None
    except ValueError as exc:
        return _problems([f"--since: {exc}"], out=err, err=err, what="usage")
    try:
        events = read_events(path, device=args.device, since=since, limit=args.limit)
    except OSError as exc:
        return _problems([f"{given}: {exc}"], out=err, err=err, what="no journal")
    except JournalError as exc:
        return _problems([f"{given}: {exc}"], out=err, err=err, what="journal unreadable")
    for event in events:
        if args.json:
            print(json.dumps(event.as_dict(), sort_keys=True), file=out)
            continue
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(event.ts))
        where = " ".join(
            f"{k}={v}" for k, v in (("device", event.device), ("timer", event.timer)) if v
        )
        details = " ".join(f"{k}={v!r}" for k, v in event.details.items())
        line = " ".join(part for part in (stamp, event.kind, where, event.message, details) if part)
        print(line, file=out)
    return EXIT_OK


def _problems(lines: Sequence[str], *, out: TextIO, err: TextIO, what: str) -> int:
    for line in lines:
        print(line, file=out)
    print(f"gatebeat: {what}: {len(lines)} problem(s)", file=err)
    return EXIT_CONFIG


def _check_config(path: str | None, *, out: TextIO, err: TextIO) -> int:
    from service.settings import ConfigError, load_settings

    try:
        settings = load_settings(path)
    except ConfigError as exc:
        return _problems(exc.problems, out=out, err=err, what="config refused")
    for warning in settings.warnings:
        print(f"warning: {warning}", file=out)
    print(settings.summary(), file=out)
    return EXIT_OK


def _driver_dirs(config: str | None, extra: Sequence[str]) -> list[str]:
    """The driver directories ``run`` would search, followed by ``extra``.

    That is ``runtime.driver_dirs`` of ``config`` (default ``$GATEBEAT_CONFIG`` if that file
    exists; read leniently, as the rest of the file need not be valid to list drivers), replaced by
    ``GATEBEAT_RUNTIME__DRIVER_DIRS`` when that is set.

    Raises:
        DriverError: the config cannot be read, or the variable is not a JSON list of paths.
    """
    from service.settings import CONFIG_ENV, ConfigError, env_driver_dirs

    if config is None:
        config = os.environ.get(CONFIG_ENV) or None
        if config is not None and not Path(config).exists():
            config = None  # the image's default config path, with nothing mounted there yet
    dirs: list[str] = []
    if config is not None:
        try:
            data = tomllib.loads(Path(config).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise DriverError("*", f"cannot read {config!r}: {exc}") from None
        runtime = data.get("runtime")
        found = runtime.get("driver_dirs", []) if isinstance(runtime, dict) else []
        dirs += [str(d) for d in found] if isinstance(found, list) else []
    try:
        from_env = env_driver_dirs(os.environ)
    except ConfigError as exc:
        raise DriverError("*", "; ".join(exc.problems)) from None
    if from_env is not None:
        dirs = from_env
    return dirs + list(extra)


def _drivers(registry: Registry, *, out: TextIO) -> int:
    broken = 0
    for name in registry.names():
        try:
            driver = registry.get(name)
        except DriverError as exc:
            print(f"{name}  ERROR: {exc.problem}", file=out)
            broken += 1
            continue
        print(
            f"{name}  from: {driver.source.describe()}  transports: "
            f"{', '.join(driver.transports)}  callbacks: {', '.join(driver.callbacks)}",
            file=out,
        )
    return EXIT_CONFIG if broken else EXIT_OK


def _sample(registry: Registry, name: str, *, out: TextIO) -> int:
    from service.settings_sample import render_sample

    out.write(render_sample(registry.get(name)))
    return EXIT_OK


def _run(path: str | None, *, out: TextIO, err: TextIO) -> int:
    from service.logs import setup_logging
    from service.settings import ConfigError, load_settings

    try:
        settings = load_settings(path)
    except ConfigError as exc:
        return _problems(exc.problems, out=err, err=err, what="config refused, nothing started")
    setup_logging(format=settings.logging.format, level=settings.logging.level)
    for warning in settings.warnings:
        log.warning("timing budget: %s", warning)
    try:
        runner = importlib.import_module("service.runner")
        code = runner.run(settings)
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception:
        log.exception("gatebeat failed")
        return EXIT_RUNTIME
    return EXIT_OK if code is None else int(code)


def _demo(listen: str, *, err: TextIO) -> int:
    from service.settings_models import parse_listen

    try:
        parse_listen(listen)
    except ValueError as exc:
        return _problems([f"--listen: {exc}"], out=err, err=err, what="bad argument")
    from service.logs import setup_logging

    setup_logging(format="text", level="info", stream=err)
    try:
        demo = importlib.import_module("service.demo")
        code = demo.main(listen=listen)
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception:
        log.exception("gatebeat demo failed")
        return EXIT_RUNTIME
    return EXIT_OK if code is None else int(code)


def main(
    argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Run the CLI; returns the process exit code (0 ok, 1 runtime failure, 2 config problem).

    Args:
        argv: the arguments (``sys.argv[1:]`` when ``None``).
        out / err: where to write (stdout / stderr when ``None``).
    """
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (argparse exits 2)
        return int(exc.code) if isinstance(exc.code, int) else EXIT_CONFIG
    try:
        return _dispatch(parser, args, out=out, err=err)
    except StopBeforeStart as exc:
        if args.command in ("run", "demo"):
            log.warning("received %s during start-up: exiting, nothing was running", exc.name)
            return EXIT_OK
        return 128 + exc.signum  # what the signal's default action would have reported


def _dispatch(
    parser: argparse.ArgumentParser, args: argparse.Namespace, *, out: TextIO, err: TextIO
) -> int:
    try:
        if args.command == "check-config":
            return _check_config(args.config, out=out, err=err)
        if args.command == "run":
            return _run(args.config, out=out, err=err)
        if args.command == "demo":
            return _demo(args.listen, err=err)
        if args.command == "events":
            return _events(args, out=out, err=err)
        if args.command in ("drivers", "sample-config"):
            config = getattr(args, "config", None)
            registry = discover(_driver_dirs(config, args.driver_dir))
            if args.command == "drivers":
                return _drivers(registry, out=out)
            return _sample(registry, args.driver, out=out)
    except DriverError as exc:
        return _problems([str(exc)], out=err, err=err, what="driver problem")
    parser.print_help(err)
    return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
