"""Reading stack config values: each check raises one ConfigError naming the key and what is allowed.

`Section` reads one config mapping and rejects the keys nobody read; the scalar readers check one
value. Patterns used by more than one part of the config live here too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from relay import schema

_LOCATION = re.compile(r"^[a-z][a-z0-9]+$")
_HTTPS_URL = re.compile(r"^https://[^\s/?#]+[^\s]*$")


class ConfigError(ValueError):
    """A stack config value is missing or wrong: names the key and what is allowed."""

    def __init__(self, key: str, problem: str, allowed: str | None = None) -> None:
        self.key = key
        message = f"{key}: {problem}"
        if allowed:
            message += f"; allowed: {allowed}"
        super().__init__(message)


_MISSING: Any = object()


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"{value!r}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"{value!r}"


def _text(key: str, value: Any, pattern: re.Pattern[str] | None = None, expected: str = "") -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, f"must be a non-empty string, got {_describe(value)}", expected or "a non-empty string")
    if pattern is not None and not pattern.match(value):
        raise ConfigError(key, f"{value!r} is not valid", expected)
    return value


def _choice(key: str, value: Any, options: Sequence[str], what: str = "value") -> str:
    if value not in options:
        raise ConfigError(key, f"unknown {what} {_describe(value)}", ", ".join(options))
    return value


def _whole(key: str, value: Any, allowed: str) -> int:
    number = value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        number = int(value)
    if isinstance(number, bool) or not isinstance(number, int):
        raise ConfigError(key, f"must be a whole number, got {_describe(value)}", allowed)
    return number


def _integer(key: str, value: Any, minimum: int, maximum: int) -> int:
    number = _whole(key, value, f"{minimum} to {maximum}")
    if not minimum <= number <= maximum:
        raise ConfigError(key, f"{number} is out of range", f"{minimum} to {maximum}")
    return number


def _number(key: str, value: Any) -> float:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, f"must be a number, got {_describe(value)}", "a number")
    return float(value)


def _bounded(key: str, value: Any, bound: schema.Bound) -> float:
    """A number within one of the relay's own bounds (relay/schema.py), so the stack accepts only what
    the relay does."""
    number = _whole(key, value, bound.describe()) if bound.whole else _number(key, value)
    if not bound.accepts(number):
        raise ConfigError(key, f"{number:g} is out of range", bound.describe())
    return number


def _flag(key: str, value: Any) -> bool:
    if isinstance(value, str) and value in ("true", "false"):
        return value == "true"
    if not isinstance(value, bool):
        raise ConfigError(key, f"must be true or false, got {_describe(value)}", "true or false")
    return value


def _items(key: str, value: Any) -> Iterator[tuple[str, Any]]:
    if not isinstance(value, list | tuple):
        raise ConfigError(key, f"must be a list, got {_describe(value)}", "a list")
    for index, item in enumerate(value):
        yield f"{key}[{index}]", item


class Section:
    """One config mapping being read. It remembers which keys were read, so that `finish` can
    reject the unknown ones (a typo must not silently fall back to a default).

    Readers take a default: `_MISSING` makes the key required, `None` makes it optional, anything
    else is used when the key is absent (and is validated like a given value)."""

    def __init__(self, key: str, value: Any, *, separator: str = ".") -> None:
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"must be a mapping, got {_describe(value)}", "a mapping")
        self.key = key
        self._value = value
        self._separator = separator
        self._known: list[str] = []

    def key_of(self, name: str) -> str:
        return f"{self.key}{self._separator}{name}"

    def has(self, name: str) -> bool:
        return self._value.get(name) is not None

    def raw(self, name: str, default: Any = _MISSING, expected: str = "a value") -> Any:
        self._known.append(name)
        value = self._value.get(name)
        if value is None:
            if default is _MISSING:
                raise ConfigError(self.key_of(name), "is required", expected)
            return default
        return value

    def text(
        self, name: str, default: Any = _MISSING, *, pattern: re.Pattern[str] | None = None, expected: str = ""
    ) -> Any:
        value = self.raw(name, default, expected or "a non-empty string")
        return None if value is None else _text(self.key_of(name), value, pattern, expected)

    def choice(self, name: str, options: Sequence[str], default: Any = _MISSING, what: str = "value") -> Any:
        value = self.raw(name, default, ", ".join(options))
        return None if value is None else _choice(self.key_of(name), value, options, what)

    def integer(self, name: str, default: Any = _MISSING, *, minimum: int, maximum: int) -> Any:
        value = self.raw(name, default, f"a whole number from {minimum} to {maximum}")
        return None if value is None else _integer(self.key_of(name), value, minimum, maximum)

    def number(self, name: str, default: Any = _MISSING) -> Any:
        value = self.raw(name, default, "a number")
        return None if value is None else _number(self.key_of(name), value)

    def bounded(self, name: str, bound: schema.Bound, default: Any = _MISSING) -> Any:
        value = self.raw(name, default, bound.describe())
        return None if value is None else _bounded(self.key_of(name), value, bound)

    def flag(self, name: str, default: bool) -> bool:
        return _flag(self.key_of(name), self.raw(name, default))

    def strings(
        self, name: str, default: Any = _MISSING, *, check: Callable[[str, Any], str] | None = None, expected: str = ""
    ) -> Any:
        """A non-empty list of strings, each checked; the default when the key is absent."""
        if not self.has(name):
            return self.raw(name, default, f"a list of {expected or 'strings'}")
        items = list(_items(self.key_of(name), self.raw(name)))
        if not items:
            raise ConfigError(
                self.key_of(name),
                "must not be an empty list",
                f"a list of {expected or 'strings'}; or leave the key out",
            )
        return tuple(check(k, v) if check else _text(k, v) for k, v in items)

    def section(self, name: str) -> Section:
        """An optional nested mapping: absent reads as empty, so its own defaults apply."""
        return Section(self.key_of(name), self.raw(name, {}))

    def mapping(self, name: str, *, required: bool) -> Section | None:
        value = self.raw(name, _MISSING if required else None, "a mapping")
        return None if value is None else Section(self.key_of(name), value)

    def string_map(self, name: str) -> dict[str, str]:
        """A mapping of free-form string keys to string values (tags, ITSM fields)."""
        section = self.section(name)
        return {_text(section.key, k): _text(section.key_of(k), v) for k, v in section.entries()}

    def entries(self) -> Iterator[tuple[str, Any]]:
        return iter(self._value.items())

    def rest(self) -> dict[str, Any]:
        """The keys not read so far, taken as they are (and counted as known)."""
        rest = {k: v for k, v in self._value.items() if k not in self._known}
        self._known.extend(rest)
        return rest

    def finish(self) -> None:
        unknown = sorted(set(self._value) - set(self._known))
        if unknown:
            raise ConfigError(self.key_of(unknown[0]), "unknown key", ", ".join(dict.fromkeys(self._known)))


def _guid(expected: str) -> Callable[[str, Any], str]:
    return lambda key, value: _text(key, value, schema.GUID, expected)
