"""Targets, routes, delivery tuning and the ITSM secrets they name: the relay's own shape.

These sections are rendered verbatim into the relay's YAML (relay_config.py), so their keys are the
relay's snake_case ones. Secrets reach the relay only as environment variable names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from infra.config.model import (
    AUTH_FIELDS,
    ROUTE_MATCH_LISTS,
    ROUTE_OPTIONS,
    SEVERITIES,
    TARGET_AUTH,
    TERMINATION_MARGIN_SECONDS,
    Route,
    Target,
    TargetAuth,
)
from infra.config.reader import (
    _HTTPS_URL,
    ConfigError,
    Section,
    _choice,
    _describe,
    _guid,
    _items,
    _number,
    _text,
)
from relay import schema

_ENV_VAR = re.compile(r"^[A-Z][A-Z0-9_]{0,127}$")
_RESERVED_ENV_PREFIXES = ("RELAY_", "AZURE_", "SECURE_EXPORT_")
_SECRET_LOOKING = re.compile(r"password|secret|token|api_?key|credential", re.IGNORECASE)

_ENV_VAR_EXPECTED = "an environment variable name such as SNOW_PASSWORD (A-Z, 0-9, _)"


def _targets(project: Section) -> tuple[Target, ...]:
    targets = project.section("targets")
    parsed = []
    for name, value in targets.entries():
        key = targets.key_of(name)
        _text(key, name, schema.TARGET_NAME, schema.TARGET_NAME_RULE)
        parsed.append(_target(name, Section(key, value)))
    if not parsed:
        raise ConfigError(targets.key, "must declare at least one target", ", ".join(TARGET_AUTH))
    return tuple(parsed)


def _target(name: str, target: Section) -> Target:
    kind = target.choice("kind", tuple(TARGET_AUTH), what="target kind")
    auth_types = TARGET_AUTH[kind]
    base_url = None
    auth = None
    if kind != "dry_run":
        base_url = target.text("base_url", pattern=_HTTPS_URL, expected="an https:// URL")
        auth_block = target.mapping("auth", required=None not in auth_types)
        if auth_block is not None:
            auth = _auth(auth_block, kind, auth_types)
    parsed = Target(
        name=name,
        kind=kind,
        base_url=base_url,
        auth=auth,
        timeout_seconds=target.bounded("timeout_seconds", schema.TIMEOUT_SECONDS, None),
        max_concurrency=target.bounded("max_concurrency", schema.MAX_CONCURRENCY, None),
        rate_limit_per_second=target.bounded("rate_limit_per_second", schema.RATE_LIMIT_PER_SECOND, None),
        options=_no_inline_secrets(target.key, target.rest()),
    )
    target.finish()
    return parsed


def _no_inline_secrets(key: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Secrets reach the relay only as environment variable names: refuse a key that looks like one,
    and check that `*_env` values are variable names the relay's own settings do not use."""
    for name, value in options.items():
        if name.endswith("_env"):
            _env_name(f"{key}.{name}", value)
        elif _SECRET_LOOKING.search(name):
            raise ConfigError(
                f"{key}.{name}",
                "looks like a secret written inline",
                f"an environment variable reference ({name}_env) filled from secure-export:itsmSecrets",
            )
        if isinstance(value, Mapping):
            _no_inline_secrets(f"{key}.{name}", value)
    return dict(options)


def _auth(auth: Section, kind: str, auth_types: Sequence[str | None]) -> TargetAuth:
    allowed = [t for t in auth_types if t is not None]
    auth_type = auth.choice("type", allowed, what=f"auth type for a {kind} target")
    fields = {}
    for name in AUTH_FIELDS[auth_type]:
        if name.endswith("_env"):
            fields[name] = _env_name(auth.key_of(name), auth.raw(name, expected=_ENV_VAR_EXPECTED))
        else:
            fields[name] = auth.text(name)
    auth.finish()
    return TargetAuth(type=auth_type, fields=fields)


def _env_name(key: str, value: Any) -> str:
    name = _text(key, value, _ENV_VAR, _ENV_VAR_EXPECTED)
    if name.startswith(_RESERVED_ENV_PREFIXES):
        raise ConfigError(
            key,
            f"{name} collides with the relay's own settings",
            f"names not starting with {', '.join(_RESERVED_ENV_PREFIXES)}",
        )
    return name


_ROUTE_MATCH_CHECKS: dict[str, Callable[[str, Any], str]] = {
    "severity": lambda key, value: _choice(key, value, SEVERITIES, "severity"),
    "subscription": _guid("a subscription GUID"),
}


def _secret_envs(targets: Sequence[Target]) -> tuple[str, ...]:
    return tuple(sorted({env for target in targets for env in target.secret_envs}))


def _routes(project: Section, targets: Sequence[Target]) -> tuple[Route, ...]:
    target_names = [t.name for t in targets]
    routes = []
    routes_expected = "a list of {match, target, fields} routes, tried in order"
    for key, value in _items(project.key_of("routes"), project.raw("routes", expected=routes_expected)):
        route = Section(key, value)
        match = route.section("match")
        criteria: dict[str, Any] = {}
        for name in ROUTE_MATCH_LISTS:
            if isinstance(match.raw(name, None), str):  # the relay takes one value or a list
                criteria[name] = (_ROUTE_MATCH_CHECKS.get(name, _text)(match.key_of(name), match.raw(name)),)
                continue
            values = match.strings(name, None, check=_ROUTE_MATCH_CHECKS.get(name))
            if values:
                criteria[name] = values
        properties = match.string_map("custom_properties")
        if properties:
            criteria["custom_properties"] = properties
        match.finish()
        target = route.choice("target", target_names, what="target")
        fields = route.section("fields")
        options = {name: route.raw(name) for name in ROUTE_OPTIONS if route.has(name)}
        for name in ROUTE_OPTIONS:
            route.raw(name, None)
        routes.append(
            Route(
                target=target,
                match=criteria,
                fields={name: _field_value(fields.key_of(name), value) for name, value in fields.entries()},
                options=_no_inline_secrets(route.key, options),
            )
        )
        route.finish()
    if not routes:
        raise ConfigError(
            project.key_of("routes"), "must hold at least one route, or no alert reaches a target", routes_expected
        )
    return tuple(routes)


def _field_value(key: str, value: Any) -> str | int | float:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(
            key, f"must be a string or a number, got {_describe(value)}", "a string (template) or a number"
        )
    return value


def _delivery(project: Section) -> dict[str, Any]:
    """The relay's `delivery` section (retries, circuit breaker, shutdown grace): the relay checks it."""
    delivery = project.section("delivery")
    values = dict(delivery.entries())
    if "shutdown_grace_seconds" in values:
        grace = _number(delivery.key_of("shutdown_grace_seconds"), values["shutdown_grace_seconds"])
        if not 0 < grace <= 3600 - TERMINATION_MARGIN_SECONDS:
            raise ConfigError(
                delivery.key_of("shutdown_grace_seconds"),
                f"{grace:g} is out of range",
                f"more than 0, up to {3600 - TERMINATION_MARGIN_SECONDS} (Container Apps waits at most 3600 s)",
            )
        values["shutdown_grace_seconds"] = grace
    return values


def _maintenance(project: Section) -> tuple[dict[str, Any], ...]:
    """The relay's `maintenance` windows (issue 15), as they are: the relay checks them (check-config)."""
    expected = "a list of maintenance windows {name, scope, schedule, mode} (docs/configuration.md)"
    windows = project.raw("maintenance", [], expected=expected)
    if not isinstance(windows, list) or not all(isinstance(w, Mapping) for w in windows):
        raise ConfigError(project.key_of("maintenance"), f"must be a list of mappings, got {_describe(windows)}",
                          expected)
    return tuple(dict(w) for w in windows)


def _itsm_secret_envs(project: Section, targets: Sequence[Target]) -> tuple[str, ...]:
    """The ITSM secrets the targets reference. Their values never pass through Pulumi: the stack
    creates each Key Vault secret with a placeholder and an operator sets the real value."""
    if project.has("itsmSecrets"):
        raise ConfigError(
            project.key_of("itsmSecrets"),
            "is no longer read: ITSM secret values stay out of Pulumi config and state",
            "no such key: remove it (`pulumi config rm itsmSecrets`) and set each value in Key Vault with "
            "`az keyvault secret set --vault-name <vault> --name <secret> --value <value>` (docs/deploy.md)",
        )
    return _secret_envs(targets)
