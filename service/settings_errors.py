"""Config problems: :class:`ConfigError` and the translation of pydantic errors into our form.

Every problem is one line, located the way a person reads the config file::

    devices[boiler].polls[temps].registers[1].type: 'int17' is not one of 'bool', 'int16', ...

Devices and timers are named by their ``name`` (by index when the name is missing, invalid or
used twice); other list items by index. A value that came from an environment variable says so.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

__all__ = ["ConfigError", "env_note", "format_location", "translate_errors"]

_NAMED_LISTS = frozenset({"devices", "polls", "heartbeats"})
_NAME = re.compile(r"^[a-zA-Z0-9_.:-]{1,64}$")  # settings_models.NAME_PATTERN


class ConfigError(Exception):
    """The configuration is not usable; ``problems`` lists every problem, one line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def _item_label(items: Sequence[Any], index: int) -> str:
    item = items[index] if 0 <= index < len(items) else None
    name = item.get("name") if isinstance(item, Mapping) else None
    if isinstance(name, str) and _NAME.fullmatch(name):
        same = [i for i in items if isinstance(i, Mapping) and i.get("name") == name]
        if len(same) == 1:
            return name
    return str(index)


def format_location(loc: Iterable[int | str], root: Any) -> str:
    """Render a pydantic location as ``devices[boiler].polls[temps].registers[1].type``.

    ``root`` is the raw input the location points into; it supplies device and timer names and
    lets discriminated-union tags (``transport.modbus-tcp.port``) be dropped from the path.
    """
    text = ""
    node: Any = root
    key: int | str | None = None
    parts = list(loc)
    for position, part in enumerate(parts):
        last = position == len(parts) - 1
        if isinstance(part, int):
            if isinstance(node, Sequence) and not isinstance(node, str):
                label = _item_label(node, part) if key in _NAMED_LISTS else str(part)
                node = node[part] if 0 <= part < len(node) else None
            else:
                label, node = str(part), None
            text += f"[{label}]"
            continue
        if isinstance(node, Mapping) and not last and part not in node and node.get("kind") == part:
            continue  # a discriminated-union tag, not a key the user wrote
        text += f".{part}" if text else part
        key = part
        node = node.get(part) if isinstance(node, Mapping) else None
    return text


_SIMPLE: dict[str, str] = {
    "int_parsing": "is not an integer",
    "int_type": "is not an integer",
    "int_from_float": "is not a whole number",
    "float_parsing": "is not a number",
    "float_type": "is not a number",
    "bool_parsing": "is not true or false",
    "bool_type": "is not true or false",
    "string_type": "is not a string",
    "finite_number": "is not a finite number",
}
_BOUNDS: dict[str, tuple[str, str]] = {
    "greater_than": (">", "gt"),
    "greater_than_equal": (">=", "ge"),
    "less_than": ("<", "lt"),
    "less_than_equal": ("<=", "le"),
    "too_short": ("at least this long:", "min_length"),
    "too_long": ("at most this long:", "max_length"),
}


def _join(options: Sequence[str]) -> str:
    return ", ".join(repr(o) for o in options)


def _literal_options(expected: str) -> list[str]:
    return re.findall(r"'((?:[^'\\]|\\.)*)'", expected) or [expected]


def _message(error: Mapping[str, Any], known_keys: Iterable[str] = ()) -> str:
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    msg = str(error["msg"])
    if kind == "missing":
        return "required, but missing"
    if kind == "extra_forbidden":
        suggestion = difflib.get_close_matches(str(error["loc"][-1]), list(known_keys), n=1)
        hint = f" (did you mean {suggestion[0]!r}?)" if suggestion else ""
        return f"unknown key{hint}"
    if kind == "literal_error":
        return f"{value!r} is not one of {_join(_literal_options(str(ctx.get('expected', ''))))}"
    if kind == "union_tag_invalid":
        options = _literal_options(str(ctx.get("expected_tags", "")))
        return f"{ctx.get('tag')!r} is not one of {_join(options)}"
    if kind == "union_tag_not_found":
        return "required, but missing"
    if kind in ("value_error", "assertion_error"):
        return re.sub(r"^(Value|Assertion) error, ", "", msg)
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a table ({{ key = value, ... }}), not {value!r}"
    if kind == "list_type":
        return f"must be a list, not {value!r}"
    if kind == "too_long":
        return f"has {ctx.get('actual_length')} entries, at most {ctx.get('max_length')} allowed"
    simple = _SIMPLE.get(kind)
    if simple is not None:
        return f"{value!r} {simple}"
    bound = _BOUNDS.get(kind)
    if bound is not None:
        op, key = bound
        return f"{value!r} must be {op} {ctx.get(key)!r}"
    text = msg[0].lower() + msg[1:] if msg else msg
    text = text.replace("input should be", "must be")
    return f"{value!r}: {text}"


_LOST = object()  # the input at a location could not be followed


def _union_point(
    loc: Sequence[int | str], root: Any, *, missing: bool = False
) -> tuple[int | None, Any]:
    """Where ``loc`` leaves the input for a union branch's label, and the input there.

    pydantic puts the branch of a (non-discriminated) union into the location
    (``value.literal['counter','toggle']``, ``value.int``). Such a label is a string step that
    is no key of the input: the value there is not a table, or it is a table without that key
    and the error is not about that key missing (``missing``). Discriminated-union tags (the
    table's own ``kind``) are left to :func:`format_location`.

    Returns:
        ``(index of the label in loc, the input value at loc[:index])``, or ``(None, None)``.
    """
    node: Any = root
    last = len(loc) - 1
    for position, part in enumerate(loc):
        if node is _LOST:
            return None, None
        if isinstance(part, int):
            fits = isinstance(node, Sequence) and not isinstance(node, str)
            node = node[part] if fits and 0 <= part < len(node) else _LOST
            continue
        if isinstance(node, Mapping):
            if part in node:
                node = node[part]
                continue
            if (missing and position == last) or node.get("kind") == part:
                continue
        return position, node
    return None, None


_EXPECTED: dict[str, str] = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "a whole number",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "model_type": "a table",
    "model_attributes_type": "a table",
    "dict_type": "a table",
    "list_type": "a list",
}


def _expected(branch: str, errors: Sequence[tuple[Sequence[int | str], Mapping[str, Any]]]) -> str:
    """What one union branch would have accepted, in words, from its errors."""
    if len(errors) == 1 and not errors[0][0]:
        error = errors[0][1]
        if error["type"] == "literal_error":
            options = _literal_options(str((error.get("ctx") or {}).get("expected", "")))
            return _join(options) if len(options) == 1 else f"one of {_join(options)}"
        simple = _EXPECTED.get(error["type"])
        if simple is not None:
            return simple
    if branch.startswith(("list[", "tuple[", "set[")):
        branch = "a list"
    elif branch.startswith("dict["):
        branch = "a table"
    details = "; ".join(
        f"{format_location(rest, None)}: {_message(error)}" if rest else _message(error)
        for rest, error in errors
    )
    return f"{branch} ({details})"


def env_note(path: tuple[str, ...], env_names: Mapping[tuple[str, ...], str]) -> str:
    """Which environment variable set the value at ``path`` (lower-case keys), for a problem line.

    Returns `` (set by VAR)`` when a variable set that value or a list holding it,
    `` (with keys set by VAR, ...)`` when variables set only some keys below it, else ``""``.
    """
    for length in range(len(path), 0, -1):
        name = env_names.get(path[:length])
        if name is not None:
            return f" (set by {name})"
    below = sorted({n for p, n in env_names.items() if path and p[: len(path)] == path})
    return f" (with keys set by {', '.join(below)})" if below else ""


def translate_errors(
    exc: ValidationError,
    root: Any,
    *,
    prefix: Sequence[int | str] = (),
    env_names: Mapping[tuple[str, ...], str] | None = None,
    known_keys: Mapping[tuple[str, ...], Iterable[str]] | None = None,
) -> list[str]:
    """Turn a pydantic ``ValidationError`` into located one-line problems.

    The errors of the branches of one union (``phase.float``, ``phase.literal['auto']``)
    become one line at the union's location saying what any branch would have accepted.

    Args:
        exc: the error.
        root: the raw input of the whole config (for names in locations).
        prefix: the location of the validated object inside ``root``.
        env_names: lower-cased key paths set from environment variables -> variable names.
        known_keys: for unknown-key hints, the accepted keys per (string) key path.
    """
    lines: list[tuple[list[int | str], str]] = []
    unions: dict[tuple[int | str, ...], int] = {}  # union location -> index in lines
    branches: dict[int, tuple[Any, dict[str, list[Any]]]] = {}
    for error in exc.errors():
        loc: list[int | str] = [*prefix, *error["loc"]]
        at, value = _union_point(loc, root, missing=error["type"] == "missing")
        if at is not None:
            key = tuple(loc[:at])
            if key not in unions:
                unions[key] = len(lines)
                lines.append((loc[:at], ""))
                branches[unions[key]] = (value, {})
            found = branches[unions[key]][1]
            found.setdefault(str(loc[at]), []).append((loc[at + 1 :], error))
            continue
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc.append("kind")
        path = tuple(str(p).lower() for p in loc if isinstance(p, str))
        keys = (known_keys or {}).get(path[:-1], ())
        lines.append((loc, _message(error, keys)))
    problems: list[str] = []
    for index, (loc, message) in enumerate(lines):
        if index in branches:
            value, found = branches[index]
            options = [_expected(branch, errors) for branch, errors in found.items()]
            message = f"{value!r} must be {' or '.join(options)}"
        where = format_location(loc, root)
        line = f"{where}: {message}" if where else message
        path = tuple(str(p).lower() for p in loc if isinstance(p, str))
        problems.append(line + env_note(path, env_names or {}))
    return problems
