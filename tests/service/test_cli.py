"""The ``gatebeat`` CLI's non-running commands, and logging setup."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from service import __version__
from service.cli import main
from service.journal import EventJournal
from service.logs import setup_logging
from service.registry import discover

BUNDLED = sorted(name for name in discover().names() if not name.startswith("_"))

VALID = """
[[devices]]
name = "plc"
driver = "example_plc_watchdog"
transport = { kind = "modbus-tcp", host = "127.0.0.1", port = 5020 }
  [[devices.heartbeats]]
  name = "watchdog"
  interval = 5
"""


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(autouse=True)
def _no_gatebeat_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.upper().startswith("GATEBEAT_"):
            monkeypatch.delenv(key)


def test_version_from_the_console_script() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", "--version"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"gatebeat {__version__}"


def test_no_command_prints_help_and_exits_2() -> None:
    code, _, err = _run()
    assert code == 2
    assert "check-config" in err


def test_unknown_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--nope"]) == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_check_config_ok(tmp_path: Path) -> None:
    path = tmp_path / "gatebeat.toml"
    path.write_text(VALID)
    code, out, _ = _run("check-config", "--config", str(path))
    assert code == 0
    assert out == (
        "ok: 1 device(s) enabled of 1, 1 timer(s), 1 bus(es); drivers: example_plc_watchdog; "
        "metrics on 127.0.0.1:9810\n"
    )


def test_check_config_uses_gatebeat_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "gatebeat.toml"
    path.write_text(VALID)
    monkeypatch.setenv("GATEBEAT_CONFIG", str(path))
    monkeypatch.setenv("GATEBEAT_METRICS__LISTEN", "0.0.0.0:9811")
    code, out, _ = _run("check-config")
    assert code == 0
    assert out.endswith("metrics on 0.0.0.0:9811\n")


def test_check_config_problems_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "gatebeat.toml"
    path.write_text(VALID.replace("interval = 5", 'interval = "5 parsecs"') + "[oops]\n")
    code, out, err = _run("check-config", "--config", str(path))
    assert code == 2
    assert out.splitlines() == [
        "oops: unknown key",
        "devices[plc].heartbeats[watchdog].interval: '5 parsecs' has an unknown unit 'parsecs' "
        "(known: us, ms, s, m, min, h, d)",
    ]
    assert "2 problem(s)" in err


def test_run_refuses_a_bad_config_before_starting(tmp_path: Path) -> None:
    code, _, err = _run("run", "--config", str(tmp_path / "missing.toml"))
    assert code == 2
    assert "config file not found" in err


@pytest.mark.parametrize(
    ("user", "password", "problem"),
    [
        ('""', '"s3cret"', "metrics.basic_auth_user: user '' is empty"),
        ('"prom"', '""', "metrics.basic_auth_password: password '' is empty"),
        ('"prom"', '"sha256:abc"', "metrics.basic_auth_password: password 'sha256:...' (3 "),
    ],
)
def test_run_refuses_basic_auth_the_exporter_cannot_use(
    tmp_path: Path, user: str, password: str, problem: str
) -> None:
    path = tmp_path / "gatebeat.toml"
    path.write_text(
        f'[metrics]\nlisten = "127.0.0.1:0"\nbasic_auth_user = {user}\n'
        f"basic_auth_password = {password}\n{VALID}"
    )
    result = subprocess.run(  # the old code started serving here: killed at the timeout
        [sys.executable, "-m", "service", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert problem in result.stderr
    assert "abc" not in result.stderr, "the secret is never shown"


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *argv], capture_output=True, text=True, timeout=60
    )


def test_events_reads_a_journal_whose_path_has_uri_characters(tmp_path: Path) -> None:
    path = tmp_path / "odd #1 ?x=%41" / "events.db"
    journal = EventJournal(path)
    journal.record("service_start", "started")
    journal.close()
    result = _cli("events", "--journal", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith(" service_start started\n")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "not an event journal (an SQLite database without an events table)"),
        (b"not sqlite at all\n" * 300, "not an SQLite database (corrupt, or another kind of file)"),
    ],
    ids=["empty", "corrupt"],
)
def test_events_on_an_unreadable_journal_is_one_line_not_a_traceback(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    path = tmp_path / "events.db"
    path.write_bytes(content)
    result = _cli("events", "--journal", str(path))
    assert result.returncode == 2
    assert result.stderr == (
        f"--journal: {str(path)!r}: {reason}\ngatebeat: journal unreadable: 1 problem(s)\n"
    )


def test_events_names_the_config_when_its_journal_is_missing(tmp_path: Path) -> None:
    config = tmp_path / "gatebeat.toml"
    journal = tmp_path / "events.db"
    config.write_text(f'[runtime]\njournal = "{journal}"\n{VALID}')
    result = _cli("events", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == (
        f"runtime.journal of {config}: no event journal at {str(journal)!r}"
    )


def test_run_with_an_unusable_journal_exits_2_with_one_line(tmp_path: Path) -> None:
    journal = tmp_path / "events.db"  # passes check-config's header check, fails to open
    journal.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4080)
    config = tmp_path / "gatebeat.toml"
    config.write_text(
        f'[metrics]\nlisten = "127.0.0.1:0"\n[runtime]\njournal = "{journal}"\n{VALID}'
    )
    result = _cli("run", "--config", str(config))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "level=error" in line]
    assert line.endswith(
        f'msg="cannot open the event journal, nothing started: runtime.journal={journal}: '
        'not an SQLite database (corrupt, or another kind of file)"'
    )


def test_demo_rejects_a_bad_listen_address() -> None:
    code, _, err = _run("demo", "--listen", "nowhere")
    assert code == 2
    assert "--listen: 'nowhere' is not HOST:PORT" in err


def test_drivers_lists_origin_transports_and_callbacks(tmp_path: Path) -> None:
    (tmp_path / "mine.py").write_text(
        "TRANSPORTS = ['serial']\nasync def poll(tick):\n    return {}\n"
    )
    code, out, _ = _run("drivers", "--driver-dir", str(tmp_path))
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert "from: builtin" in lines["modbus"]
    assert "modbus-tcp" in lines["modbus"]
    assert lines["mine"] == (
        f"mine  from: {(tmp_path / 'mine.py').resolve()}  transports: serial  callbacks: poll"
    )


def test_drivers_reports_broken_ones(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text("raise RuntimeError('boom')\n")
    config = tmp_path / "gatebeat.toml"
    config.write_text(f'[runtime]\ndriver_dirs = ["{tmp_path}"]\n')
    code, out, _ = _run("drivers", "--config", str(config))
    assert code == 2
    assert "bad  ERROR: module" in out
    assert "failed to import: RuntimeError: boom" in out


MINE = "TRANSPORTS = ['serial']\nasync def poll(tick):\n    return {}\n"


@pytest.mark.parametrize("how", ["GATEBEAT_CONFIG", "GATEBEAT_RUNTIME__DRIVER_DIRS", "--config"])
def test_drivers_and_sample_config_find_the_drivers_run_would(tmp_path: Path, how: str) -> None:
    drivers = tmp_path / "drivers"
    drivers.mkdir()
    (drivers / "mine.py").write_text(MINE)
    config = tmp_path / "gatebeat.toml"
    in_file = tmp_path if how == "GATEBEAT_RUNTIME__DRIVER_DIRS" else drivers  # env wins there
    config.write_text(f'[runtime]\ndriver_dirs = ["{in_file}"]\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEBEAT_")}
    args: list[str] = []
    if how == "GATEBEAT_CONFIG":
        env[how] = str(config)
    elif how == "GATEBEAT_RUNTIME__DRIVER_DIRS":  # replaces the file's key, as for run
        env["GATEBEAT_CONFIG"] = str(config)
        env[how] = json.dumps([str(drivers)])
    else:
        args = ["--config", str(config)]
    for command in (["drivers"], ["sample-config", "mine"]):
        result = subprocess.run(
            [sys.executable, "-m", "service", *command, *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        if command == ["drivers"]:
            assert f"mine  from: {(drivers / 'mine.py').resolve()}" in result.stdout
        else:
            assert result.stdout.startswith("# gatebeat sample config for the 'mine' driver")


def test_drivers_work_while_the_default_config_file_is_not_there_yet(tmp_path: Path) -> None:
    """The image sets GATEBEAT_CONFIG to /etc/gatebeat/gatebeat.toml; `docker run --rm gatebeat
    drivers` without a mounted config must still list the built-in drivers. An explicit
    --config that is missing stays an error."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEBEAT_")}
    env["GATEBEAT_CONFIG"] = str(tmp_path / "not-mounted.toml")
    for command in (["drivers"], ["sample-config", "modbus"]):
        result = subprocess.run(
            [sys.executable, "-m", "service", *command],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert result.returncode == 0, result.stderr
    explicit = subprocess.run(
        [sys.executable, "-m", "service", "drivers", "--config", str(tmp_path / "nope.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert explicit.returncode == 2 and "nope.toml" in explicit.stdout + explicit.stderr


def test_a_bad_driver_dirs_variable_is_reported_naming_it() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEBEAT_")}
    env["GATEBEAT_RUNTIME__DRIVER_DIRS"] = "/etc/gatebeat/drivers"
    result = subprocess.run(
        [sys.executable, "-m", "service", "drivers"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(
        "driver '*': GATEBEAT_RUNTIME__DRIVER_DIRS: '/etc/gatebeat/drivers' is not valid JSON"
    )


def test_sample_config_unknown_driver() -> None:
    code, _, err = _run("sample-config", "nosuchdriver")
    assert code == 2
    assert "driver 'nosuchdriver': unknown driver" in err


@pytest.mark.parametrize("driver", BUNDLED)
def test_sample_config_round_trips_through_check_config(driver: str, tmp_path: Path) -> None:
    code, sample, _ = _run("sample-config", driver)
    assert code == 0
    assert sample.startswith(f"# gatebeat sample config for the '{driver}' driver")
    path = tmp_path / "sample.toml"
    path.write_text(sample)
    code, out, _ = _run("check-config", "--config", str(path))
    assert code == 0, out
    assert out.splitlines()[-1].startswith("ok: 1 device(s) enabled of 1")


AWKWARD_DRIVER = '''
from pydantic import BaseModel, ConfigDict, Field
TRANSPORTS = ["modbus-tcp"]
class Config(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)
    scale: float = Field(gt=0, description="Scale factor.\\nApplied to every reading.")
    count: int = Field(ge=3, le=10, description="How many.")
    ratio: float = Field(gt=0, lt=1, description="A fraction.")
    prompt: str = "> "
    """The prompt the device prints.

    Sent back verbatim."""
class Poll(BaseModel):
    pass
async def poll(tick):
    return {}
'''


def test_sample_config_is_valid_toml_that_passes_check_config_for_any_driver(
    tmp_path: Path,
) -> None:
    (tmp_path / "awkward.py").write_text(AWKWARD_DRIVER)
    result = _cli("sample-config", "awkward", "--driver-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    sample = result.stdout
    config = tomllib.loads(sample)["devices"][0]  # every description line is a comment
    assert (config["scale"], config["count"], 0 < config["ratio"] < 1) == (1.0, 3, True)
    assert "# Scale factor.\n# Applied to every reading.\n" in sample
    assert "# The prompt the device prints.\n#\n# Sent back verbatim.\n# prompt = " in sample
    path = tmp_path / "sample.toml"
    path.write_text(sample)
    env = {**os.environ, "GATEBEAT_RUNTIME__DRIVER_DIRS": json.dumps([str(tmp_path)])}
    check = subprocess.run(
        [sys.executable, "-m", "service", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("root_logging")
def test_text_logs_are_key_value_lines() -> None:
    stream = io.StringIO()
    setup_logging(format="text", level="debug", stream=stream)
    adapter = logging.LoggerAdapter(logging.getLogger("gatebeat.health"), {"device": "boiler"})
    adapter.warning("device down: %s", 'timeout "2 s"\nretrying')
    line = stream.getvalue()
    assert line.count("\n") == 1
    fields = line.split(" ", 4)
    assert fields[0].startswith("ts=") and fields[0].endswith("Z")
    assert fields[1:4] == ["level=warning", "logger=gatebeat.health", "device=boiler"]
    assert fields[4] == 'msg="device down: timeout \\"2 s\\"\\nretrying"\n'


@pytest.mark.usefixtures("root_logging")
def test_json_logs_one_object_per_line() -> None:
    stream = io.StringIO()
    setup_logging(format="json", level="INFO", stream=stream)
    try:
        raise ValueError("bad")
    except ValueError:
        logging.getLogger("gatebeat.x").exception("failed", extra={"timer": "temps"})
    logging.getLogger("gatebeat.x").debug("hidden")
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record["level"] == "error"
    assert record["timer"] == "temps"
    assert record["msg"] == "failed"
    assert "ValueError: bad" in record["exc"]


def test_setup_logging_rejects_unknown_values() -> None:
    with pytest.raises(ValueError, match="is not a level name"):
        setup_logging(level="loud")
    with pytest.raises(ValueError, match="must be 'text' or 'json'"):
        setup_logging(format="xml")  # type: ignore[arg-type]


_SIGTERM_DURING_IMPORT = """
import os, runpy, signal, sys
class SigtermOnImport:  # the signal arrives while the CLI's modules are being imported
    def find_spec(self, name, path=None, target=None):
        if name == "service.registry":
            os.kill(os.getpid(), signal.SIGTERM)
        return None
sys.meta_path.insert(0, SigtermOnImport())
runpy.run_module("service", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize(("command", "code"), [("run", 0), ("check-config", 128 + 15)])
def test_a_stop_signal_while_the_cli_is_imported_is_a_clean_exit(
    tmp_path: Path, command: str, code: int
) -> None:
    root = str(Path(__file__).resolve().parents[2])
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEBEAT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", _SIGTERM_DURING_IMPORT, command, "--config", "x.toml"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, result.stderr
    if command == "run":
        assert "received SIGTERM during start-up: exiting, nothing was running" in result.stderr
