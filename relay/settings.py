"""The relay's environment contract: every RELAY_* variable, parsed and checked once at start."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from relay.schema import GUID, STORE_URL_PREFIXES

# Azure Monitor's first-party "AzNS AAD Webhook" app, which sends Secure Webhook calls
# (Microsoft's action-group setup script: "$azureMonitorActionGroupsAppId ... Do not change").
AZURE_MONITOR_APP_ID = "461e8683-5575-4561-ac7f-899cc907d62a"
# The app role Microsoft's script creates and assigns to that app.
DEFAULT_ROLE = "ActionGroupsSecureWebhook"
DEFAULT_OPENID_CONFIG_URL = "https://login.microsoftonline.com/{tenant}/v2.0/.well-known/openid-configuration"
# /metrics names token-failure reasons and targets: never on the public listener, by default loopback only
# (the stack sets RELAY_METRICS_HOST to the container's interface so its scraper reaches it).
DEFAULT_METRICS_PORT = 9090
DEFAULT_METRICS_HOST = "127.0.0.1"
DEFAULT_STORE_URL = "sqlite:///./relay.db"
# Where `relay serve` runs the delivery worker: in a child process of its own (intake and delivery then
# use a core each, and a storm's deliveries never starve intake), or on intake's event loop.
DELIVERY_PROCESS_SEPARATE = "separate"
DELIVERY_PROCESS_INLINE = "inline"
DELIVERY_PROCESS_MODES = (DELIVERY_PROCESS_SEPARATE, DELIVERY_PROCESS_INLINE)


def fetch_url_problem(url: str) -> str | None:
    """Why `url` may not be fetched for keys or metadata, or None: https with a host, or plain http only
    to a loopback host (parsed, never a prefix compare: http://localhost.attacker.example/ is not
    loopback), and never userinfo (http://localhost@host/ names `host`)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        return "it is not a valid URL"
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return "it holds userinfo (user@ or user:password@): name the host alone"
    if not host:
        return "it names no host"
    if parts.scheme == "https":
        return None
    if parts.scheme == "http":
        return None if is_loopback_host(host) else "plain http is allowed only to a loopback host"
    return f"scheme {parts.scheme!r} is not https"


def is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False



class SettingsError(ValueError):
    """A RELAY_* variable is missing or malformed; the message names it and says what is wrong."""


@dataclass(frozen=True, slots=True)
class EnvironmentVariable:
    name: str
    default: str
    meaning: str


# Every variable `relay serve` reads, in one place: `relay serve --help` prints this table, and a test
# checks the README's configuration table against it.
ENVIRONMENT: tuple[EnvironmentVariable, ...] = (
    EnvironmentVariable("RELAY_TENANT_ID", "required", "your Entra tenant GUID"),
    EnvironmentVariable("RELAY_AUDIENCES", "required",
                        "comma-separated: the Application ID URI (v1 tokens) and/or the client id (v2 tokens)"),
    EnvironmentVariable("RELAY_ALLOWED_APP_IDS", AZURE_MONITOR_APP_ID,
                        "caller apps (Azure Monitor's action groups app)"),
    EnvironmentVariable("RELAY_REQUIRED_ROLE", DEFAULT_ROLE, "app role the caller must hold"),
    EnvironmentVariable("RELAY_OPENID_CONFIG_URL", DEFAULT_OPENID_CONFIG_URL,
                        "metadata URL ({tenant} is substituted); change it for sovereign clouds"),
    EnvironmentVariable("RELAY_STORE", DEFAULT_STORE_URL, "where alerts are kept"),
    EnvironmentVariable("RELAY_HOST", "0.0.0.0", "listener address"),
    EnvironmentVariable("RELAY_PORT", "8080", "listener port"),
    EnvironmentVariable("RELAY_METRICS_HOST", DEFAULT_METRICS_HOST, "where /metrics is served"),
    EnvironmentVariable("RELAY_METRICS_PORT", str(DEFAULT_METRICS_PORT),
                        "the /metrics port (never RELAY_PORT; 0 picks a free port, for tests)"),
    EnvironmentVariable("RELAY_ALLOWED_SUBSCRIPTIONS", "unset (any, with a warning)",
                        "comma-separated subscription GUIDs alerts may come from; others get 403"),
    EnvironmentVariable("RELAY_ALLOWED_ALERT_RULES", "unset (any)",
                        "comma-separated alert rule ids or glob patterns over them"),
    EnvironmentVariable("RELAY_CONFIG", "unset (dry run)", "path of the targets-and-routes YAML"),
    EnvironmentVariable("RELAY_DELIVERY_PROCESS", DELIVERY_PROCESS_SEPARATE,
                        "separate (the delivery worker in a child process) or inline (on intake's event loop)"),
    EnvironmentVariable("RELAY_LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING, ERROR or CRITICAL"),
    EnvironmentVariable("RELAY_LOG_FORMAT", "json unless the log stream is a terminal",
                        "json (one object per line) or text"),
)

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("json", "text")


@dataclass(frozen=True, slots=True)
class LogSettings:
    """RELAY_LOG_LEVEL and RELAY_LOG_FORMAT, read before anything logs (every `relay` command uses them)."""

    level: str = "INFO"
    format: str = "json"

    @classmethod
    def from_env(cls, env: Mapping[str, str], terminal: bool) -> LogSettings:
        """`terminal`: whether the log stream is a terminal (then text is the default, else json)."""
        level = env.get("RELAY_LOG_LEVEL", "").strip().upper() or "INFO"
        if level not in LOG_LEVELS:
            raise SettingsError(f"RELAY_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)} "
                                f"(got {env['RELAY_LOG_LEVEL'][:20]!r})")
        fmt = env.get("RELAY_LOG_FORMAT", "").strip().lower() or ("text" if terminal else "json")
        if fmt not in LOG_FORMATS:
            raise SettingsError(f"RELAY_LOG_FORMAT must be json or text (got {env['RELAY_LOG_FORMAT'][:20]!r})")
        return cls(level=level, format=fmt)


@dataclass(frozen=True, slots=True)
class Settings:
    tenant_id: str
    audiences: tuple[str, ...]
    allowed_app_ids: tuple[str, ...] = (AZURE_MONITOR_APP_ID,)
    required_role: str = DEFAULT_ROLE
    openid_config_url: str = DEFAULT_OPENID_CONFIG_URL.format(tenant="{tenant}")
    store_url: str = DEFAULT_STORE_URL
    host: str = "0.0.0.0"
    port: int = 8080
    metrics_port: int = DEFAULT_METRICS_PORT  # 0: any free port (tests); the app records the one bound
    metrics_host: str = DEFAULT_METRICS_HOST
    config_path: str | None = None
    # Issue 12 item 15: empty means any source (with a warning at start).
    allowed_subscriptions: tuple[str, ...] = ()
    allowed_alert_rules: tuple[str, ...] = ()
    delivery_process: str = DELIVERY_PROCESS_SEPARATE  # one of DELIVERY_PROCESS_MODES

    @property
    def metadata_url(self) -> str:
        return self.openid_config_url.replace("{tenant}", self.tenant_id)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        tenant = _required(env, "RELAY_TENANT_ID")
        if not GUID.match(tenant):
            raise SettingsError(f"RELAY_TENANT_ID must be a tenant GUID (got {tenant!r})")
        audiences = _list(env, "RELAY_AUDIENCES", required=True)
        apps = _list(env, "RELAY_ALLOWED_APP_IDS") or (AZURE_MONITOR_APP_ID,)
        for app in apps:
            if not GUID.match(app):
                raise SettingsError(f"RELAY_ALLOWED_APP_IDS must be comma-separated app GUIDs (got {app!r})")
        role = env.get("RELAY_REQUIRED_ROLE", "").strip() or DEFAULT_ROLE
        url = env.get("RELAY_OPENID_CONFIG_URL", "").strip() or DEFAULT_OPENID_CONFIG_URL
        problem = fetch_url_problem(url.replace("{tenant}", tenant))
        if problem is not None:
            raise SettingsError(
                f"RELAY_OPENID_CONFIG_URL must be an https URL (plain http only on loopback): {problem}"
            )
        store = env.get("RELAY_STORE", "").strip() or DEFAULT_STORE_URL
        if not store.startswith(STORE_URL_PREFIXES):
            # Nothing of the value is shown: a connection string in the wrong form still holds an account key.
            raise SettingsError(
                "RELAY_STORE must be sqlite:///path.db, azure-storage://<account> or an Azure Storage "
                "connection string starting with DefaultEndpointsProtocol= (the value given is not shown)"
            )
        port = _port(env, "RELAY_PORT", 8080)
        metrics_port = _port(env, "RELAY_METRICS_PORT", DEFAULT_METRICS_PORT, allow_zero=True)
        if metrics_port == port:
            raise SettingsError(f"RELAY_METRICS_PORT must differ from RELAY_PORT ({port}): /metrics is never public")
        subscriptions = _list(env, "RELAY_ALLOWED_SUBSCRIPTIONS")
        for sub in subscriptions:
            if not GUID.match(sub):
                raise SettingsError(
                    f"RELAY_ALLOWED_SUBSCRIPTIONS must be comma-separated subscription GUIDs (got {sub[:40]!r})"
                )
        rules = _list(env, "RELAY_ALLOWED_ALERT_RULES")
        for rule in rules:
            if not rule.startswith(("/subscriptions/", "*")):
                raise SettingsError(
                    "RELAY_ALLOWED_ALERT_RULES must be comma-separated alert rule ids or glob patterns over them, "
                    f"each starting with /subscriptions/ or * (got {rule[:60]!r})"
                )
        delivery_process = env.get("RELAY_DELIVERY_PROCESS", "").strip().lower() or DELIVERY_PROCESS_SEPARATE
        if delivery_process not in DELIVERY_PROCESS_MODES:
            raise SettingsError(f"RELAY_DELIVERY_PROCESS must be {' or '.join(DELIVERY_PROCESS_MODES)} "
                                f"(got {env['RELAY_DELIVERY_PROCESS'][:20]!r})")
        return cls(
            tenant_id=tenant.lower(),
            audiences=audiences,
            allowed_app_ids=tuple(a.lower() for a in apps),
            required_role=role,
            openid_config_url=url,
            store_url=store,
            host=env.get("RELAY_HOST", "").strip() or "0.0.0.0",
            port=port,
            metrics_port=metrics_port,
            metrics_host=env.get("RELAY_METRICS_HOST", "").strip() or DEFAULT_METRICS_HOST,
            config_path=env.get("RELAY_CONFIG", "").strip() or None,
            allowed_subscriptions=tuple(s.lower() for s in subscriptions),
            allowed_alert_rules=rules,
            delivery_process=delivery_process,
        )


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise SettingsError(f"{name} is required but not set")
    return value


def _list(env: Mapping[str, str], name: str, required: bool = False) -> tuple[str, ...]:
    raw = env.get(name, "")
    items = tuple(x.strip() for x in raw.split(",") if x.strip())
    if required and not items:
        raise SettingsError(f"{name} is required: a comma-separated list, e.g. api://<client-id>,<client-id>")
    return items


def _port(env: Mapping[str, str], name: str, default: int, allow_zero: bool = False) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    low = 0 if allow_zero else 1
    if not raw.isdigit() or not low <= int(raw) < 65536:
        raise SettingsError(f"{name} must be a port number from {low} to 65535 (got {raw[:10]!r})")
    return int(raw)
