"""Reading one target's block of the relay's YAML: typed options whose every complaint names the key.

Secrets never sit in the file: an auth block names an environment variable (`password_env`, ...) and
the value is read from the environment when the target is built.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

# Keys every target block may carry, whatever its kind: the delivery core reads `kind` and
# `max_concurrency`; the target reads the rest.
COMMON_KEYS = frozenset({"kind", "base_url", "auth", "timeout_seconds", "max_concurrency"})
DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_MAX_CONCURRENCY = 4

_MISSING: Any = object()


class TargetConfigError(ValueError):
    """A target's configuration is wrong; the message names the target, the key and what to do."""


class Options:
    """One mapping of a target's configuration, read key by key with the key's full path in errors."""

    def __init__(self, target: str, cfg: Mapping[str, Any], path: str = "") -> None:
        if not isinstance(cfg, Mapping):
            raise TargetConfigError(f"target {target!r}: {path or 'the target'} must be a mapping")
        self.target = target
        self.cfg = cfg
        self.path = path

    def where(self, key: str) -> str:
        return f"target {self.target!r}: {self.path}{key}"

    def reject_unknown(self, known: Iterable[str]) -> None:
        allowed = set(known)
        unknown = sorted(str(k) for k in self.cfg if k not in allowed)
        if unknown:
            raise TargetConfigError(
                f"{self.where(unknown[0])} is not a known option (allowed: {', '.join(sorted(allowed))})"
            )

    def has(self, key: str) -> bool:
        return self.cfg.get(key) is not None

    def str(self, key: str, default: Any = _MISSING, *, max_length: int | None = None) -> Any:
        value = self.cfg.get(key)
        if value is None:
            if default is _MISSING:
                raise TargetConfigError(f"{self.where(key)} is required")
            return default
        if not isinstance(value, str) or not value.strip():
            raise TargetConfigError(f"{self.where(key)} must be a non-empty string (got {value!r})")
        if max_length is not None and len(value) > max_length:
            raise TargetConfigError(f"{self.where(key)} must be at most {max_length} characters")
        return value

    def bool(self, key: str, default: bool) -> bool:
        value = self.cfg.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise TargetConfigError(f"{self.where(key)} must be true or false (got {value!r})")
        return value

    def number(
        self, key: str, default: float, *, minimum: float = 0.0, maximum: float | None = None
    ) -> float:
        value = self.cfg.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= minimum:
            raise TargetConfigError(
                f"{self.where(key)} must be a number greater than {minimum:g} (got {value!r})"
            )
        if maximum is not None and value > maximum:
            raise TargetConfigError(f"{self.where(key)} must be at most {maximum:g} (got {value!r})")
        return float(value)

    def integer(self, key: str, default: int, *, minimum: int = 1) -> int:
        value = self.cfg.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise TargetConfigError(
                f"{self.where(key)} must be a whole number of at least {minimum} (got {value!r})"
            )
        return value

    def choice(self, key: str, choices: Iterable[str], default: str) -> str:
        allowed = tuple(choices)
        value = self.cfg.get(key, default)
        if value not in allowed:
            raise TargetConfigError(f"{self.where(key)} must be one of {', '.join(allowed)} (got {value!r})")
        return value

    def string_map(self, key: str) -> dict[str, str]:
        value = self.cfg.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str | int | float) and not isinstance(v, bool)
            for k, v in value.items()
        ):
            raise TargetConfigError(f"{self.where(key)} must map field names to strings or numbers")
        return {k: str(v) for k, v in value.items()}

    def section(self, key: str) -> Options:
        value = self.cfg.get(key)
        if value is None:
            raise TargetConfigError(f"{self.where(key)} is required")
        return Options(self.target, value, f"{self.path}{key}.")

    def secret(self, key: str, env: Mapping[str, str]) -> str:
        """The value of the environment variable this option names (`password_env: RT_PASSWORD`)."""
        variable = self.str(key)
        value = env.get(variable, "")
        if not value:
            raise TargetConfigError(
                f"{self.where(key)} names the environment variable {variable}, which is not set or empty"
            )
        return value

    def base_url(self) -> str:
        """`base_url`: https, or plain http only on a loopback address (tests and local demos)."""
        raw = self.str("base_url")
        parts = urlsplit(raw)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise TargetConfigError(f"{self.where('base_url')} must be an https URL (got {raw!r})")
        if parts.scheme == "http" and not is_loopback(parts.hostname):
            raise TargetConfigError(
                f"{self.where('base_url')} must use https: credentials are sent on every call "
                f"(plain http is allowed only on loopback, got {raw!r})"
            )
        if parts.query or parts.fragment:
            raise TargetConfigError(
                f"{self.where('base_url')} must not carry a query or fragment (got {raw!r})"
            )
        return raw.rstrip("/")

    def timeout_seconds(self) -> float:
        return self.number("timeout_seconds", DEFAULT_TIMEOUT_SECONDS, maximum=600)

    def max_concurrency(self) -> int:
        return self.integer("max_concurrency", DEFAULT_MAX_CONCURRENCY)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
