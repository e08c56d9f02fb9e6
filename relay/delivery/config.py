"""RELAY_CONFIG: the targets and the ordered routes, loaded and validated with line numbers.

The whole file is checked before the relay starts (and by `relay check-config`), and every problem is
reported with its line and dotted key. Secrets are only ever names of environment variables
(`password_env: SNOW_PASSWORD`); an inline secret is a config error. Without RELAY_CONFIG, every
alert goes to the `dry_run` target, which writes what it would send as JSON lines.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from jinja2 import Template, TemplateSyntaxError

from relay.delivery.flapping import Damping
from relay.delivery.grouping import GroupSpec
from relay.delivery.lifecycle import Policy
from relay.delivery.maintenance import Schedule, Window, cron_problem
from relay.delivery.rendering import compile_template
from relay.delivery.routing import (
    DeliverySettings,
    Match,
    ReconcileSettings,
    RelayConfig,
    RetentionSettings,
    Route,
    RouteSync,
    SyncSettings,
    TargetConfig,
)
from relay.schema import (
    DELIVERY,
    DELIVERY_DERIVED,
    FLAPPING,
    GROUP,
    GROUP_BY,
    GROUP_CHILDREN,
    GROUP_KEYS,
    GUID,
    INCIDENT_PER,
    INLINE_SECRET_KEYS,
    MAINTENANCE_DURATION_MINUTES,
    MAINTENANCE_KEYS,
    MAINTENANCE_MODES,
    MAINTENANCE_SCHEDULE_KEYS,
    MAINTENANCE_SCOPE_KEYS,
    MATCH_KEYS,
    MAX_CONCURRENCY,
    ON_REFIRE,
    ON_REPEAT,
    ON_RESOLVE,
    RATE_LIMIT_PER_SECOND,
    RECONCILE,
    RECONCILE_ALERT_TYPES,
    RECONCILE_KEYS,
    RETENTION,
    ROUTE_KEYS,
    SEVERITIES,
    SYNC,
    SYNC_ROUTE_KEYS,
    TARGET_NAME,
    TARGET_NAME_RULE,
    TIMEOUT_SECONDS,
    Bound,
    GroupChildren,
    IncidentPer,
    MaintenanceMode,
    OnRefire,
    OnRepeat,
    OnResolve,
)
from relay.targets import TARGET_MODULES, Forwarder, Target, build_target, can_link, can_sync, load_kind
from relay.targets.target_config import TargetConfigError

Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Problem:
    path: str  # dotted key: targets.snow.auth.password
    message: str
    line: int | None = None

    def format(self, source: str) -> str:
        """`file:line: key: message`, the shape editors and CI logs link to."""
        where = f"{source}:{self.line}" if self.line else source
        return f"{where}: {self.path or '(document)'}: {self.message}"


class ConfigError(ValueError):
    """RELAY_CONFIG is wrong; `problems` lists every problem with its line and key."""

    def __init__(self, problems: list[Problem], source: str = "RELAY_CONFIG") -> None:
        self.problems = problems
        self.source = source
        super().__init__("\n".join(p.format(source) for p in problems))


def load_config(path: str) -> RelayConfig:
    """Read and validate the file, including each target's own options; raises ConfigError (or OSError)."""
    with open(path, encoding="utf-8") as f:
        return parse_config(f.read(), source=path, check_target_options=True)


def build_targets(config: RelayConfig, env: Mapping[str, str] | None = None) -> dict[str, Target | Forwarder]:
    """One target object per configured target (secrets read from `env`; raises TargetConfigError)."""
    return {name: build_target(name, cfg.block, env) for name, cfg in config.targets.items()}


def parse_config(text: str, source: str = "RELAY_CONFIG", check_target_options: bool = False,
                 now: datetime | None = None) -> RelayConfig:
    """Validate the whole document; raises ConfigError listing every problem found.

    check_target_options: also let each target module check its block (no I/O, secrets not read).
    now: the time a recurring maintenance window's cron must fire within five years of (default: now).
    """
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            doc = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError([Problem("", f"not valid YAML: {getattr(exc, 'problem', None) or exc}", line)],
                          source) from None
    lines: dict[Path, int] = {}
    v = _Validator(lines, now)
    if node is not None:
        _index(node, (), lines, v.problems)
    config = v.document(doc)
    if config is not None and check_target_options:
        reported = {p.path for p in v.problems} | v.covered
        for name, cfg in config.targets.items():
            # One complaint per key: what the checks above reported, the target module need not repeat.
            v.problems.extend(p for p in _target_problems(name, cfg, lines) if p.path not in reported)
    if v.problems or config is None:
        raise ConfigError(sorted(v.problems, key=lambda p: (p.line or 0, p.path)), source)
    return config


def _target_problems(name: str, cfg: TargetConfig, lines: Mapping[Path, int]) -> list[Problem]:
    """The target module's own complaints about its block, each at the line of its key."""
    try:
        build_target(name, cfg.block, env=_Placeholders())
    except TargetConfigError as exc:
        paths: list[Path] = [("targets", name, *key.split(".")) if key else ("targets", name)
                             for key, _ in exc.problems]
        return [Problem(_dotted(path), message, _line(lines, path))
                for path, (_, message) in zip(paths, exc.problems, strict=True)]
    except ImportError as exc:
        path: Path = ("targets", name, "kind")
        return [Problem(_dotted(path), f"the {cfg.kind} target is not available ({exc})", _line(lines, path))]
    except ValueError as exc:  # not a reader's complaint: about the block as a whole
        path = ("targets", name)
        return [Problem(_dotted(path), str(exc), _line(lines, path))]
    return []


class _Placeholders(Mapping[str, str]):
    """An environment in which every variable is set: check-config validates shape, not secrets."""

    def __getitem__(self, key: str) -> str:
        return "check-config-placeholder"

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(())

    def __len__(self) -> int:
        return 0


# -- validation -----------------------------------------------------------------------------------

def _index(node: yaml.Node, path: Path, lines: dict[Path, int], dups: list[Problem]) -> None:
    """Record the line of every key and item; report duplicate keys (YAML would keep the last silently)."""
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                dups.append(Problem(_dotted((*path, key)), "duplicate key", key_node.start_mark.line + 1))
            seen.add(key)
            lines[(*path, key)] = key_node.start_mark.line + 1
            _index(value_node, (*path, key), lines, dups)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, (*path, i), lines, dups)


def _dotted(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line(lines: Mapping[Path, int], path: Path) -> int | None:
    for n in range(len(path), -1, -1):
        if path[:n] in lines:
            return lines[path[:n]]
    return None


class _NoiseChecks:
    """Issue 15's keys: a route's `flapping:` and the top-level `maintenance:` list (mixed into _Validator)."""

    bad: Any
    mapping: Any
    bounded: Any
    match: Any
    patterns: Any
    now: datetime

    def flapping(self, value: Any, path: Path) -> Damping | None:
        if value is None:
            return None
        body = self.mapping(value, path, FLAPPING)
        if body is None:
            return None
        for key in ("window_seconds", "transitions"):
            if key not in body:
                self.bad((*path, key), f"is required: {FLAPPING[key].describe()}")
        kw = {key: self.bounded(body.get(key, bound.default), (*path, key), bound) for key, bound in FLAPPING.items()}
        if "hold_resolve_seconds" not in body:  # the default hold, but never longer than the window
            kw["hold_resolve_seconds"] = min(kw["hold_resolve_seconds"], kw["window_seconds"])
        if kw["hold_resolve_seconds"] > kw["window_seconds"]:
            self.bad((*path, "hold_resolve_seconds"),
                     f"is longer than window_seconds ({kw['hold_resolve_seconds']:g} > {kw['window_seconds']:g}): a "
                     "resolve is held at most one flap window")
            return None
        return Damping(window_seconds=kw["window_seconds"], transitions=int(kw["transitions"]),
                       hold_seconds=kw["hold_resolve_seconds"])

    def maintenance(self, value: Any, retention: RetentionSettings) -> tuple[Window, ...]:
        path: Path = ("maintenance",)
        if value is None:
            return ()
        if not isinstance(value, list):
            self.bad(path, "must be a list of maintenance windows")
            return ()
        windows: list[Window] = []
        names: set[str] = set()
        for i, item in enumerate(value):
            w = self.window(item, (*path, i), retention)
            if w is None:
                continue
            if w.name in names:
                self.bad((*path, i, "name"), f"another window is named {w.name!r}")
            names.add(w.name)
            windows.append(w)
        return tuple(windows)

    def window(self, value: Any, path: Path, retention: RetentionSettings) -> Window | None:
        body = self.mapping(value, path, MAINTENANCE_KEYS)
        if body is None:
            return None
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            self.bad((*path, "name"), "is required: the window's name")
            name = ""
        mode = body.get("mode", MAINTENANCE_MODES[0])
        if mode not in MAINTENANCE_MODES:
            self.bad((*path, "mode"), f"must be one of {', '.join(MAINTENANCE_MODES)} (got {mode!r})")
            mode = MAINTENANCE_MODES[0]
        scope = body.get("scope") or {}
        sbody = self.mapping(scope, (*path, "scope"), MAINTENANCE_SCOPE_KEYS) or {}
        resource_ids = self.patterns(sbody["resource_id"], (*path, "scope", "resource_id")) \
            if "resource_id" in sbody else ()
        match = self.match({k: v for k, v in sbody.items() if k != "resource_id"} or None, (*path, "scope"))
        if "schedule" not in body:
            self.bad((*path, "schedule"), "is required: start and end, or cron and duration_minutes")
            return None
        schedule = self.schedule(body["schedule"], (*path, "schedule"))
        if schedule is None or not name:
            return None
        days = retention.delivered_days
        if schedule.length > timedelta(days=days):
            self.bad((*path, "schedule"), f"lasts longer than retention.delivered_days ({days:g} days): an alert "
                                          "that fired at its start must still be stored at its end")
        return Window(name=name, schedule=schedule, scope=match, resource_ids=resource_ids,
                      mode=MaintenanceMode(mode))

    def schedule(self, value: Any, path: Path) -> Schedule | None:
        body = self.mapping(value, path, MAINTENANCE_SCHEDULE_KEYS)
        if body is None:
            return None
        zone = body.get("time_zone", "UTC")
        try:
            if not isinstance(zone, str):
                raise ZoneInfoNotFoundError(zone)
            tz = ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            self.bad((*path, "time_zone"), f"{zone!r} is not an IANA time zone (e.g. Europe/Berlin, UTC)")
            return None
        if "cron" in body:
            for key in ("start", "end"):
                if key in body:
                    self.bad((*path, key), "a recurring window (cron) has no start or end; give duration_minutes")
            cron = body["cron"]
            if not isinstance(cron, str):
                self.bad((*path, "cron"), "must be a cron expression, e.g. '0 2 * * SUN'")
                return None
            problem = cron_problem(cron, zone, self.now)
            if problem:
                self.bad((*path, "cron"), problem)
                return None
            if "duration_minutes" not in body:
                self.bad((*path, "duration_minutes"), "is required with cron: how long each run lasts")
                return None
            minutes = self.bounded(body["duration_minutes"], (*path, "duration_minutes"), MAINTENANCE_DURATION_MINUTES)
            return Schedule(zone=zone, cron=cron, duration=timedelta(minutes=minutes))
        if "duration_minutes" in body:
            self.bad((*path, "duration_minutes"), "applies to a recurring window (cron); a one-off one has an end")
        start = self.moment(body.get("start"), (*path, "start"), tz)
        end = self.moment(body.get("end"), (*path, "end"), tz)
        if start is None or end is None:
            return None
        if end <= start:
            self.bad((*path, "end"), f"ends before it starts ({end.isoformat()} is not after {start.isoformat()})")
            return None
        return Schedule(zone=zone, start=start, end=end)

    def moment(self, value: Any, path: Path, tz: ZoneInfo) -> datetime | None:
        if value is None:
            self.bad(path, "is required: an ISO 8601 time, e.g. 2026-12-24T22:00 (read in time_zone)")
            return None
        if isinstance(value, datetime):  # YAML reads an unquoted timestamp itself
            t = value
        else:
            try:
                t = datetime.fromisoformat(str(value))
            except ValueError:
                self.bad(path, f"{value!r} is not an ISO 8601 time, e.g. 2026-12-24T22:00")
                return None
        return (t if t.tzinfo else t.replace(tzinfo=tz)).astimezone(UTC)


class _Validator(_NoiseChecks):
    def __init__(self, lines: Mapping[Path, int], now: datetime | None = None) -> None:
        self.now = now or datetime.now(UTC)  # a cron expression must fire within five years of this
        self.lines = lines
        self.problems: list[Problem] = []
        self.covered: set[str] = set()  # keys a reported problem also speaks for (password -> password_env)

    def bad(self, path: Path, message: str, *, covers: Iterable[Path] = ()) -> None:
        self.problems.append(Problem(_dotted(path), message, _line(self.lines, path)))
        self.covered.update(_dotted(p) for p in covers)

    def mapping(self, value: Any, path: Path, allowed: Iterable[str] | None = None) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.bad(path, f"must be a mapping (got {_type(value)})")
            return None
        if allowed is not None:
            allowed = tuple(allowed)
            for key in value:
                if key not in allowed:
                    self.bad((*path, str(key)), f"unknown key; expected one of {', '.join(allowed)}")
        return value

    def document(self, doc: Any) -> RelayConfig | None:
        if doc is None:
            self.bad((), "the file is empty; it needs targets: and routes: (see docs/configuration.md)")
            return None
        root = self.mapping(doc, (), ("targets", "routes", "delivery", "retention", "reconcile", "maintenance",
                                      "sync"))
        if root is None:
            return None
        targets = self.targets(root.get("targets"))
        routes = self.routes(root.get("routes"), targets)
        delivery = self.delivery(root.get("delivery"))
        retention = self.retention(root.get("retention"))
        reconcile = self.reconcile(root.get("reconcile"), retention) if "reconcile" in root else None
        maintenance = self.maintenance(root.get("maintenance"), retention)
        sync = self.sync_settings(root.get("sync"))
        return RelayConfig(targets=targets, routes=tuple(routes), delivery=delivery, retention=retention,
                           reconcile=reconcile, maintenance=maintenance, sync=sync)

    # targets ---------------------------------------------------------------------------------------

    def targets(self, value: Any) -> dict[str, TargetConfig]:
        path: Path = ("targets",)
        if value is None:
            self.bad(path, "is required: a mapping of target names to their settings")
            return {}
        raw = self.mapping(value, path)
        if not raw:
            if raw is not None:
                self.bad(path, "must name at least one target")
            return {}
        out = {}
        for name, body in raw.items():
            tpath = (*path, str(name))
            if not isinstance(name, str) or not TARGET_NAME.match(name):
                self.bad(tpath, TARGET_NAME_RULE)
                continue
            cfg = self.target(name, body, tpath)
            if cfg is not None:
                out[name] = cfg
        return out

    def target(self, name: str, value: Any, path: Path) -> TargetConfig | None:
        body = self.mapping(value, path)
        if body is None:
            return None
        kind = body.get("kind")
        if kind not in TARGET_MODULES:
            self.bad((*path, "kind"), f"must be one of {', '.join(TARGET_MODULES)} (got {kind!r})")
            return None
        timeout = self.bounded(body.get("timeout_seconds", TIMEOUT_SECONDS.default), (*path, "timeout_seconds"),
                               TIMEOUT_SECONDS)
        concurrency = int(self.bounded(body.get("max_concurrency", MAX_CONCURRENCY.default),
                                       (*path, "max_concurrency"), MAX_CONCURRENCY))
        # A kind may declare the pace its API documents (`default_rate_limit_per_second`); unset, that applies.
        kind_rate = getattr(load_kind(kind).TARGET_CLASS, "default_rate_limit_per_second",
                            RATE_LIMIT_PER_SECOND.default)
        rate = self.bounded(body.get("rate_limit_per_second", kind_rate),
                            (*path, "rate_limit_per_second"), RATE_LIMIT_PER_SECOND)
        severity = self.severity(body.get("severity"), (*path, "severity"))
        self.no_inline_secrets(body, path)
        return TargetConfig(name=name, kind=kind, block=body, timeout_seconds=timeout,
                            max_concurrency=concurrency, rate_limit_per_second=rate, severity=severity)

    def no_inline_secrets(self, body: Mapping[str, Any], path: Path) -> None:
        """Secrets only as names of environment variables: `password_env: SNOW_PASSWORD`."""
        for key, value in body.items():
            if key in INLINE_SECRET_KEYS or (key == "value" and path[-1:] == ("auth",)):
                self.bad((*path, key), f"inline secrets are not allowed; put the secret in an environment "
                                       f"variable and name it with {key}_env: VARIABLE_NAME",
                         covers=[(*path, f"{key}_env")])
            elif isinstance(value, dict):
                self.no_inline_secrets(value, (*path, str(key)))

    def severity(self, value: Any, path: Path) -> dict[str, dict[str, Any]]:
        if value is None:
            return {}
        body = self.mapping(value, path, SEVERITIES)
        out = {}
        for sev, fields in (body or {}).items():
            f = self.mapping(fields, (*path, sev))
            if f is not None and sev in SEVERITIES:
                out[sev] = self.scalars(f, (*path, sev))
        return out

    def scalars(self, body: Mapping[str, Any], path: Path) -> dict[str, Any]:
        out = {}
        for k, v in body.items():
            if not isinstance(v, (str, int, float, bool)):
                self.bad((*path, str(k)), f"must be a string, number or boolean (got {_type(v)})")
            else:
                out[str(k)] = v
        return out

    def bounded(self, value: Any, path: Path, bound: Bound) -> float:
        if not bound.accepts(value):
            self.bad(path, f"must be {bound.describe()} (got {value!r})")
            return bound.low
        return value if bound.whole else float(value)

    # routes ----------------------------------------------------------------------------------------

    def routes(self, value: Any, targets: Mapping[str, TargetConfig]) -> list[Route]:
        path: Path = ("routes",)
        if value is None:
            self.bad(path, "is required: a list of routes (a route without match: takes every alert)")
            return []
        if not isinstance(value, list) or not value:
            self.bad(path, "must be a non-empty list of routes")
            return []
        return [r for i, item in enumerate(value) if (r := self.route(item, (*path, i), i, targets))]

    def route(self, value: Any, path: Path, index: int, targets: Mapping[str, TargetConfig]) -> Route | None:
        body = self.mapping(value, path, ROUTE_KEYS)
        if body is None:
            return None
        target = body.get("target")
        if not isinstance(target, str) or not target:
            self.bad((*path, "target"), "is required: the name of a target")
        elif target not in targets and not any(p.path == f"targets.{target}" or p.path.startswith(f"targets.{target}.")
                                               for p in self.problems):  # already reported there
            names = ", ".join(targets) or "none defined"
            self.bad((*path, "target"), f"no target named {target!r} (targets: {names})")
        policy = Policy(
            on_repeat=OnRepeat(self.choice(body, "on_repeat", ON_REPEAT, path)),
            on_refire=OnRefire(self.choice(body, "on_refire", ON_REFIRE, path)),
            on_resolve=OnResolve(self.choice(body, "on_resolve", ON_RESOLVE, path)),
        )
        incident_per = IncidentPer(self.choice(body, "incident_per", INCIDENT_PER, path))
        if isinstance(target, str) and target in targets:
            self.route_options_apply(body, targets[target], path)
        cont = body.get("continue", False)
        if not isinstance(cont, bool):
            self.bad((*path, "continue"), "must be true or false")
            cont = False
        fields = {}
        raw_fields = body.get("fields")
        if raw_fields is not None:
            f = self.mapping(raw_fields, (*path, "fields"))
            for k, v in self.scalars(f or {}, (*path, "fields")).items():
                fields[k] = self.template(v, (*path, "fields", k)) if isinstance(v, str) and "{" in v else v
        return Route(
            target=target if isinstance(target, str) else "",
            match=self.match(body.get("match"), (*path, "match")),
            policy=policy,
            incident_per=incident_per,
            fields=fields,
            summary=self.template(body.get("summary"), (*path, "summary")),
            description=self.template(body.get("description"), (*path, "description")),
            continue_=cont,
            index=index,
            group=self.group(body, incident_per, path, targets.get(target) if isinstance(target, str) else None),
            damping=self.flapping(body.get("flapping"), (*path, "flapping")),
            sync=self.route_sync(body.get("sync"), (*path, "sync"), incident_per,
                                 targets.get(target) if isinstance(target, str) else None),
        )

    def route_sync(self, value: Any, path: Path, incident_per: IncidentPer,
                   target: TargetConfig | None) -> RouteSync:
        """A route's `sync:` (two-way sync): only for a target whose kind can say which tickets changed
        (`changed_since`), and for one incident per alert (a CI's incident gathers several alerts)."""
        if value is None:
            return RouteSync()
        body = self.mapping(value, path, SYNC_ROUTE_KEYS)
        if body is None:
            return RouteSync()
        flags = {}
        for key in SYNC_ROUTE_KEYS:
            flag = body.get(key, False)
            if not isinstance(flag, bool):
                self.bad((*path, key), f"must be true or false (got {_type(flag)})")
                flag = False
            flags[key] = flag
        sync = RouteSync(**flags)
        if not sync.enabled or target is None:
            return sync
        try:
            cls = load_kind(target.kind).TARGET_CLASS
        except ImportError:  # reported at the target's kind
            return sync
        if not can_sync(cls):
            kinds = ", ".join(k for k in TARGET_MODULES if can_sync(load_kind(k).TARGET_CLASS))
            self.bad(path, f"cannot apply to target {target.name!r} ({target.kind}): the relay cannot read which of "
                           f"its tickets changed (no changed_since); two-way sync needs a target of kind {kinds} "
                           "(docs/reconciliation.md)")
        elif incident_per is not IncidentPer.ALERT:
            self.bad(path, f"needs incident_per: alert (got {incident_per}): an incident per configuration item "
                           "gathers several alerts, and closing its ticket says nothing about one of them")
        return sync

    def sync_settings(self, value: Any) -> SyncSettings:
        path: Path = ("sync",)
        if value is None:
            return SyncSettings()
        body = self.mapping(value, path, SYNC)
        if body is None:
            return SyncSettings()
        kw = {key: self.bounded(body[key], (*path, key), bound) for key, bound in SYNC.items() if key in body}
        return SyncSettings(**kw)

    def group(self, body: Mapping[str, Any], incident_per: IncidentPer, path: Path,
              target: TargetConfig | None) -> GroupSpec | None:
        """A route's `group:` (storm grouping, relay.delivery.grouping)."""
        if body.get("group") is None:
            return None
        path = (*path, "group")
        raw = self.mapping(body["group"], path, GROUP_KEYS)
        if raw is None:
            return None
        if incident_per is not IncidentPer.ALERT:
            self.bad(path, f"needs incident_per: alert (got {incident_per}): a group gathers alerts, each its own "
                           "incident, under one parent")
        by = GroupSpec().by
        if "by" in raw:
            names = raw["by"] if isinstance(raw["by"], list) else [raw["by"]]
            if not names or not all(isinstance(n, str) for n in names):
                self.bad((*path, "by"), f"must be a non-empty list of {', '.join(GROUP_BY)}")
                names = []
            for i, name in enumerate(names):
                if isinstance(name, str) and name not in GROUP_BY:
                    where = (*path, "by", i) if isinstance(raw["by"], list) else (*path, "by")
                    self.bad(where, f"unknown group key {name!r}; expected one of {', '.join(GROUP_BY)}")
                elif names.index(name) != i:
                    self.bad((*path, "by", i), f"{name!r} is listed more than once")
            by = tuple(dict.fromkeys(n for n in names if isinstance(n, str) and n in GROUP_BY)) or by
        numbers = {key: self.bounded(raw[key], (*path, key), bound) for key, bound in GROUP.items() if key in raw}
        children = GroupChildren(self.choice(raw, "children", GROUP_CHILDREN, path))
        if "max_children" in raw and children is not GroupChildren.LINK:
            self.bad((*path, "max_children"), "applies only with children: link (notes have no limit)")
        self.group_applies(target, children, path)
        return GroupSpec(by=by, children=children,
                         **{k: int(v) if GROUP[k].whole else v for k, v in numbers.items()})  # type: ignore[arg-type]

    def group_applies(self, target: TargetConfig | None, children: GroupChildren, path: Path) -> None:
        """A forwarder owns the lifecycle (no grouping); a kind without `link` cannot have linked children."""
        try:
            cls = load_kind(target.kind).TARGET_CLASS if target is not None else None
        except ImportError:  # reported at the target's kind
            return
        if cls is None or target is None:
            return
        if hasattr(cls, "forward"):
            self.bad(path, f"cannot apply to target {target.name!r} ({target.kind}): it forwards every event as "
                           "it came and its receiver owns the lifecycle")
        elif "reopen" in getattr(cls, "unsupported_route_options", {}).get("on_refire", {}):
            self.bad(path, f"cannot apply to target {target.name!r} ({target.kind}): a parent reopens when an "
                           "alert of its window fires after it resolved, and this kind cannot reopen")
        elif children is GroupChildren.LINK and not can_link(cls):
            self.bad((*path, "children"), f"link cannot apply to target {target.name!r} ({target.kind}): it cannot "
                                          "link tickets; use children: note (docs/targets.md)")

    def route_options_apply(self, body: Mapping[str, Any], target: TargetConfig, path: Path) -> None:
        """Refuse route options the target's kind declares it cannot carry out (`unsupported_route_options`)."""
        try:
            declared = getattr(load_kind(target.kind).TARGET_CLASS, "unsupported_route_options", {})
        except ImportError:  # reported at the target's kind
            return
        for key, refused in declared.items():
            value = body.get(key)
            if isinstance(value, str) and value in refused:
                self.bad((*path, key), f"{value} cannot apply to target {target.name!r} ({target.kind}): "
                                       f"{refused[value]}")

    def choice(self, body: Mapping[str, Any], key: str, choices: tuple[str, ...], path: Path) -> str:
        value = body.get(key, choices[0])
        if value not in choices:
            self.bad((*path, key), f"must be one of {', '.join(choices)} (got {value!r})")
            return choices[0]
        return value

    def template(self, value: Any, path: Path) -> Template | None:
        if value is None:
            return None
        if not isinstance(value, str):
            self.bad(path, f"must be a template string (got {_type(value)})")
            return None
        try:
            return compile_template(value)
        except TemplateSyntaxError as exc:
            self.bad(path, f"template syntax error on its line {exc.lineno}: {exc.message}")
            return None

    def match(self, value: Any, path: Path) -> Match:
        if value is None:
            return Match()
        body = self.mapping(value, path, MATCH_KEYS)
        if body is None:
            return Match()
        kw: dict[str, Any] = {}
        for key in MATCH_KEYS:
            if key not in body:
                continue
            if key == "custom_properties":
                props = self.mapping(body[key], (*path, key))
                kw[key] = {str(k): self.patterns(v, (*path, key, str(k))) for k, v in (props or {}).items()}
                continue
            patterns = self.patterns(body[key], (*path, key))
            if key == "severity":
                for p in patterns:
                    if p not in SEVERITIES:
                        self.bad((*path, key), f"{p!r} is not a severity; use {', '.join(SEVERITIES)}")
            if key == "signal_type":
                patterns = tuple(p.replace(" ", "") for p in patterns)
            kw[key] = patterns
        return Match(**kw)

    def patterns(self, value: Any, path: Path) -> tuple[str, ...]:
        items = value if isinstance(value, list) else [value]
        if not items or not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in items):
            self.bad(path, "must be a string or a non-empty list of strings")
            return ()
        return tuple(str(x) for x in items)

    # delivery --------------------------------------------------------------------------------------

    def delivery(self, value: Any) -> DeliverySettings:
        path: Path = ("delivery",)
        if value is None:
            return DeliverySettings()
        settings = {**DELIVERY, **DELIVERY_DERIVED}
        body = self.mapping(value, path, settings)
        if body is None:
            return DeliverySettings()
        kw = {key: self.bounded(body[key], (*path, key), bound) for key, bound in settings.items() if key in body}
        return DeliverySettings(**kw)

    def retention(self, value: Any) -> RetentionSettings:
        path: Path = ("retention",)
        if value is None:
            return RetentionSettings()
        body = self.mapping(value, path, RETENTION)
        if body is None:
            return RetentionSettings()
        kw = {key: self.bounded(body[key], (*path, key), bound) for key, bound in RETENTION.items() if key in body}
        return RetentionSettings(**kw)

    # reconcile (docs/reconciliation.md) -----------------------------------------------------------

    def reconcile(self, value: Any, retention: RetentionSettings) -> ReconcileSettings | None:
        path: Path = ("reconcile",)
        body = self.mapping(value, path, RECONCILE_KEYS)
        if body is None:
            return None
        subs = self.strings(body.get("subscriptions"), (*path, "subscriptions"), "subscription ids (GUIDs)")
        for i, sub in enumerate(subs):
            if not GUID.match(sub):
                self.bad((*path, "subscriptions", i), f"must be a subscription id, a GUID (got {sub[:60]!r})")
        rules = self.strings(body.get("rule_ids"), (*path, "rule_ids"), "alert rule resource ids")
        for i, rule in enumerate(rules):
            if not rule.lower().startswith("/subscriptions/") or "/providers/" not in rule.lower():
                self.bad((*path, "rule_ids", i),
                         f"must be an alert rule's resource id, /subscriptions/.../providers/... (got {rule[:60]!r})")
        types = body.get("alert_types", list(RECONCILE_ALERT_TYPES))
        kinds = self.strings(types, (*path, "alert_types"), "alert types")
        for i, kind in enumerate(kinds):
            if kind not in RECONCILE_ALERT_TYPES:
                self.bad((*path, "alert_types", i), f"must be one of {', '.join(RECONCILE_ALERT_TYPES)} (got {kind!r})")
        kw = {key: self.bounded(body[key], (*path, key), bound) for key, bound in RECONCILE.items() if key in body}
        look_back = kw.get("look_back_hours", RECONCILE["look_back_hours"].default)
        if look_back > retention.delivered_days * 24:
            self.bad((*path, "look_back_hours"),
                     f"must be at most retention.delivered_days x 24 = {retention.delivered_days * 24:g} hours "
                     f"(the store must still hold the keys of the events it looks back at; got {look_back:g})")
        return ReconcileSettings(subscriptions=tuple(s.lower() for s in subs),
                                 rule_ids=tuple(r.rstrip("/").lower() for r in rules),
                                 alert_types=tuple(dict.fromkeys(kinds)), **kw)

    def strings(self, value: Any, path: Path, what: str) -> list[str]:
        """A non-empty list of non-empty strings (problems reported); the good entries."""
        if not isinstance(value, list) or not value:
            self.bad(path, f"is required: a non-empty list of {what} (got {_type(value)})")
            return []
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                self.bad((*path, i), f"must be a non-empty string (got {_type(item)})")
            else:
                out.append(item.strip())
        return out


def _type(value: Any) -> str:
    return {dict: "a mapping", list: "a list", type(None): "nothing"}.get(type(value), type(value).__name__)
