"""Reading one target's block of the relay's YAML: typed options, and every problem of the block named by its key.

A reader that finds a problem records it (dotted key, message) and returns a harmless value (the default,
or "" for a required value), so one pass over the block finds all of its problems; `check` then raises
them together as one `TargetConfigError`. A kind's options are one dataclass (`Options.read`): its
fields are the option keys and their defaults the defaults.

Secrets never sit in the file: an auth block names an environment variable (`password_env`, ...) and
the value is read from the environment when the target is built.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import ipaddress
import re
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar, overload
from urllib.parse import SplitResult, urlsplit

from relay.schema import MAX_CONCURRENCY, TIMEOUT_SECONDS, Bound

# Keys every target block may carry, whatever its kind: the delivery core reads `kind`,
# `timeout_seconds` and `max_concurrency`; the target reads them all.
COMMON_KEYS = frozenset({"kind", "base_url", "auth", "timeout_seconds", "max_concurrency"})
# The common keys of a kind that calls an endpoint; a kind that calls none (dry_run) takes the rest.
ENDPOINT_KEYS = frozenset({"base_url", "auth"})

_REQUIRED: Any = object()
T = TypeVar("T")


def option_keys(options_class: type) -> frozenset[str]:
    """The option keys of a kind: the field names of its options dataclass."""
    return frozenset(f.name for f in dataclasses.fields(options_class))


class TargetConfigError(ValueError):
    """A target's block is wrong. `problems` lists each as (dotted key in the block, or "", message);
    the text is one line per problem: `target 'snow': auth.password_env is required`."""

    def __init__(self, target: str, problems: Iterable[tuple[str, str]]) -> None:
        self.target = target
        self.problems = list(problems)
        super().__init__("\n".join(self._line(key, message) for key, message in self.problems))

    def _line(self, key: str, message: str) -> str:
        return f"target {self.target!r}: {key} {message}" if key else f"target {self.target!r}: {message}"


class Options:
    """One mapping of a target's configuration, read key by key; problems are kept with the key's full path."""

    def __init__(
        self, target: str, cfg: Mapping[str, Any], path: str = "", problems: list[tuple[str, str]] | None = None
    ) -> None:
        if not isinstance(cfg, Mapping):
            raise TargetConfigError(target, [("", f"the target must be a mapping (got {type(cfg).__name__})")])
        self.target = target
        self.cfg = cfg
        self.path = path
        self.problems = [] if problems is None else problems  # shared by the sections of one block

    def problem(self, key: str, message: str) -> None:
        """Record a problem of `key` (relative to this section)."""
        self.problems.append((f"{self.path}{key}", message))

    def check(self) -> None:
        """Raise every problem recorded in the block at once."""
        if self.problems:
            raise TargetConfigError(self.target, self.problems)

    def reject_unknown(self, known: Iterable[str]) -> None:
        allowed = set(known)
        for key in sorted(str(k) for k in self.cfg if k not in allowed):
            self.problem(key, f"is not a known option (allowed: {', '.join(sorted(allowed))})")

    def has(self, key: str) -> bool:
        return self.cfg.get(key) is not None

    @overload
    def text(self, key: str, *, max_length: int | None = None) -> str: ...
    @overload
    def text(self, key: str, default: str, *, max_length: int | None = None) -> str: ...
    @overload
    def text(self, key: str, default: None, *, max_length: int | None = None) -> str | None: ...

    def text(self, key: str, default: Any = _REQUIRED, *, max_length: int | None = None) -> Any:
        """A non-empty string; `default` when absent. A required one that is missing or wrong reads as ""."""
        fallback = "" if default is _REQUIRED else default
        value = self.cfg.get(key)
        if value is None:
            if default is _REQUIRED:
                self.problem(key, "is required")
            return fallback
        if not isinstance(value, str) or not value.strip():
            self.problem(key, f"must be a non-empty string ({_shown(key, value)})")
            return fallback
        if max_length is not None and len(value) > max_length:
            self.problem(key, f"must be at most {max_length} characters")
            return fallback
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.cfg.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.problem(key, f"must be true or false ({_shown(key, value)})")
            return default
        return value

    def bounded(self, key: str, bound: Bound) -> float:
        """A number within `bound` (relay.schema); its default when absent."""
        value = self.cfg.get(key)
        if value is None:
            return bound.default
        if not bound.accepts(value):
            self.problem(key, f"must be {bound.describe()} ({_shown(key, value)})")
            return bound.default
        return value if bound.whole else float(value)

    def choice(self, key: str, choices: Iterable[str], default: str) -> str:
        value = self.variant(key, choices, default)
        return default if value is None else value

    def variant(self, key: str, choices: Iterable[str], default: str) -> str | None:
        """A choice that decides what else the section holds (an auth `type`): None when it is wrong,
        so that the caller reads nothing else and the wrong choice stays the one complaint."""
        allowed = tuple(choices)
        value = self.cfg.get(key, default)
        if value not in allowed:
            self.problem(key, f"must be one of {', '.join(allowed)} ({_shown(key, value)})")
            return None
        return value

    def string_map(self, key: str) -> dict[str, str]:
        value = self.cfg.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str | int | float) and not isinstance(v, bool)
            for k, v in value.items()
        ):
            self.problem(key, "must map field names to strings or numbers")
            return {}
        return {k: str(v) for k, v in value.items()}

    def section(self, key: str) -> Options:
        """A nested mapping. When it is missing or not a mapping, that is the one problem reported:
        what is then read from the section goes unreported."""
        value = self.cfg.get(key)
        if isinstance(value, Mapping):
            return Options(self.target, value, f"{self.path}{key}.", self.problems)
        self.problem(key, "is required" if value is None else f"must be a mapping (got {type(value).__name__})")
        return Options(self.target, {}, f"{self.path}{key}.", problems=[])

    def secret(self, key: str, env: Mapping[str, str]) -> str:
        """The value of the environment variable this option names (`password_env: RT_PASSWORD`)."""
        variable = self.text(key)
        if not variable:
            return ""
        if not _ENV_NAME.fullmatch(variable):
            # Often the secret itself, pasted where its variable's name belongs: never shown.
            self.problem(key, "must name an environment variable (letters, digits and _, not starting with a "
                              "digit); the value given is not shown, in case it is the secret itself")
            return ""
        value = env.get(variable, "")
        if not value:
            self.problem(key, f"names the environment variable {variable}, which is not set or empty")
        return value

    def base_url(self, *, endpoint: bool = False) -> str:
        """`base_url`: https, or plain http only on a loopback address (tests and local demos).

        An API's root loses a trailing slash and may carry no query; an `endpoint` (the forward
        target's) is the whole URL called, kept as written, query string included.
        """
        raw = self.text("base_url")
        if not raw:
            return ""
        parts = _split_url(raw)
        # Only scheme and host are ever shown: a URL's userinfo or query may hold a credential.
        got = f"got {parts.scheme}://{parts.hostname}/..." if parts is not None and parts.hostname else "not shown"
        unusable = parts is None or parts.scheme not in ("https", "http") or not parts.hostname
        if unusable or (endpoint and parts.fragment):
            self.problem("base_url", f"must be an https URL{' without a #fragment' if endpoint else ''} ({got})")
        elif "@" in parts.netloc:
            self.problem("base_url", f"must not carry user:password@: name credentials in the auth block ({got})")
        elif parts.scheme == "http" and not is_loopback(parts.hostname):
            why = "the alert and credentials travel in it" if endpoint else "credentials are sent on every call"
            self.problem("base_url", f"must use https: {why} (plain http is allowed only on loopback, {got})")
        elif not endpoint and (parts.query or parts.fragment):
            self.problem("base_url", f"must not carry a query or fragment ({got}; the query is not shown)")
        return raw if endpoint else raw.rstrip("/")

    def timeout_seconds(self) -> float:
        return self.bounded("timeout_seconds", TIMEOUT_SECONDS)

    def max_concurrency(self) -> int:
        return int(self.bounded("max_concurrency", MAX_CONCURRENCY))

    def read(self, options_class: type[T]) -> T:
        """A kind's options dataclass, each field read from the key of its name, its default when absent.

        The field's type picks the reader (str, str | None, bool, a mapping of strings); metadata
        `choices` makes it a choice and `max_length` bounds a string.
        """
        hints = typing.get_type_hints(options_class)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(options_class):  # type: ignore[arg-type]
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
            kind = hints[f.name]
            if "choices" in f.metadata:
                values[f.name] = self.choice(f.name, f.metadata["choices"], default)
            elif kind is bool:
                values[f.name] = self.flag(f.name, default)
            elif kind is str or kind == str | None:
                values[f.name] = self.text(f.name, default, max_length=f.metadata.get("max_length"))
            elif typing.get_origin(kind) in (collections.abc.Mapping, dict):
                values[f.name] = self.string_map(f.name)
            else:
                raise TypeError(f"{options_class.__name__}.{f.name}: no option reader for {kind}")
        return options_class(**values)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Keys whose values are, or may be, secrets (or the names of secrets): never echoed in an error.
_SECRET_WORDS = ("password", "secret", "token", "key", "credential", "value", "_env")


def _shown(key: str, value: Any) -> str:
    """`got <value>` for an error message, unless the key is secret-like."""
    if any(word in key.lower() for word in _SECRET_WORDS):
        return f"got a {type(value).__name__}; the value is not shown"
    return f"got {value!r}"


def _split_url(raw: str) -> SplitResult | None:
    """The parts of a URL, or None when it cannot be parsed (an unclosed `[` of an IPv6 address)."""
    try:
        return urlsplit(raw)
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
