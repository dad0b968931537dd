"""Generic config-only driver for line-oriented serial devices: send a command, parse the reply.

Each ``[[devices.polls]]`` entry names a ``command`` and a ``reply`` regular expression::

    [[devices.polls]]
    name = "temperature"
    interval = 1.0
    command = "READ?\\r\\n"
    reply = '^(?P<temperature_celsius>-?\\d+(?:\\.\\d+)?)$'

The command is written exactly as given (a TOML basic string turns ``\\r\\n`` into CR LF; put
the device's own terminator at its end). The reply is one line (one frame, without the
transport's terminator); the pattern is searched in it, so anchor it with ``^`` and ``$`` to
match the whole line. Every named group becomes a reading field: a number (``21.5``, ``-3``,
``1e3``) is a float, any other text is kept as a string (strings are not exported as metrics).
A group that did not take part in the match is left out.
"""

from __future__ import annotations

import functools
import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.driver import Readings, Tick, Value
from service.values import field_name_problem

__all__ = ["TRANSPORTS", "Poll", "ReplyMismatch", "parse_reply", "poll"]

TRANSPORTS = ("serial",)

_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


class ReplyMismatch(ValueError):
    """A device's reply did not match the poll's ``reply`` pattern."""


class Poll(BaseModel):
    """One serial poll: the command to send and the pattern that parses the reply."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: str = Field(
        min_length=1,
        description='Bytes sent to the device, including its terminator, e.g. "READ?\\r\\n".',
        examples=["READ?\r\n"],
    )
    reply: str = Field(
        description=(
            "Regular expression searched in one reply line; each named group (?P<field>...) "
            "becomes a reading, a float when numeric, else a string."
        ),
        examples=[r"^(?P<temperature_celsius>-?\d+(?:\.\d+)?)$"],
    )

    @field_validator("reply")
    @classmethod
    def _valid_pattern(cls, pattern: str) -> str:
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}") from None
        if not compiled.groupindex:
            raise ValueError(
                f"{pattern!r} has no named group; use (?P<field_name>...) for each reading"
            )
        for group in compiled.groupindex:
            problem = field_name_problem(group)
            if problem is not None:
                raise ValueError(f"group {problem}")
        return pattern

    @property
    def pattern(self) -> re.Pattern[str]:
        """The compiled ``reply`` pattern."""
        return _compiled(self.reply)


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _convert(text: str) -> Value:
    stripped = text.strip()
    return float(stripped) if _NUMBER.fullmatch(stripped) else text


def parse_reply(options: Poll, reply: str, *, device: str, poll_name: str) -> Readings:
    """Turn one reply line into readings with the poll's pattern.

    Args:
        options: the poll's settings.
        reply: the reply line, without its terminator.
        device: the device name, for the error message.
        poll_name: the poll's name, for the error message.

    Raises:
        ReplyMismatch: the pattern does not match the reply.
    """
    match = options.pattern.search(reply)
    if match is None:
        raise ReplyMismatch(
            f"device {device!r}: poll {poll_name!r}: reply {reply!r} does not match "
            f"pattern {options.reply!r}"
        )
    return {name: _convert(value) for name, value in match.groupdict().items() if value is not None}


async def poll(tick: Tick) -> Readings:
    """Send the poll's command, read one reply line and parse it into readings.

    Raises:
        ReplyMismatch: the reply does not match the poll's pattern.
        TransportError: the transport failed (device unavailable, timeout, bad frame).
    """
    options: Poll = tick.options
    reply: str = await tick.session.request(options.command)
    return parse_reply(options, reply, device=tick.device.name, poll_name=tick.timer.name)
