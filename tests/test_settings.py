"""The environment contract: defaults, and one clear line naming the variable for every bad value."""

from __future__ import annotations

import subprocess
import sys

import pytest

from relay.settings import AZURE_MONITOR_APP_ID, Settings, SettingsError

TENANT = "11111111-2222-4333-8444-555555555555"
GOOD = {"RELAY_TENANT_ID": TENANT, "RELAY_AUDIENCES": "api://x, 66666666-7777-4888-9999-000000000000"}


def test_defaults():
    s = Settings.from_env(GOOD)
    assert s.audiences == ("api://x", "66666666-7777-4888-9999-000000000000")
    assert s.allowed_app_ids == (AZURE_MONITOR_APP_ID,)
    assert s.required_role == "ActionGroupsSecureWebhook"
    assert s.store_url == "sqlite:///./relay.db"
    assert (s.host, s.port, s.metrics_host, s.metrics_port) == ("0.0.0.0", 8080, "127.0.0.1", 9090)
    assert (s.allowed_subscriptions, s.allowed_alert_rules) == ((), ())
    assert s.delivery_process == "separate"
    assert s.metadata_url == f"https://login.microsoftonline.com/{TENANT}/v2.0/.well-known/openid-configuration"


def test_delivery_process_inline_keeps_one_process():
    assert Settings.from_env({**GOOD, "RELAY_DELIVERY_PROCESS": " Inline "}).delivery_process == "inline"


def test_sovereign_cloud_metadata_url_template():
    s = Settings.from_env({**GOOD, "RELAY_OPENID_CONFIG_URL":
                           "https://login.microsoftonline.us/{tenant}/v2.0/.well-known/openid-configuration"})
    assert s.metadata_url.startswith(f"https://login.microsoftonline.us/{TENANT}/")


@pytest.mark.parametrize(
    "env,variable",
    [
        ({"RELAY_AUDIENCES": "api://x"}, "RELAY_TENANT_ID"),
        ({**GOOD, "RELAY_TENANT_ID": "contoso.onmicrosoft.com"}, "RELAY_TENANT_ID"),
        ({"RELAY_TENANT_ID": TENANT}, "RELAY_AUDIENCES"),
        ({**GOOD, "RELAY_AUDIENCES": " , "}, "RELAY_AUDIENCES"),
        ({**GOOD, "RELAY_ALLOWED_APP_IDS": "azure-monitor"}, "RELAY_ALLOWED_APP_IDS"),
        ({**GOOD, "RELAY_OPENID_CONFIG_URL": "http://login.example/meta"}, "RELAY_OPENID_CONFIG_URL"),
        ({**GOOD, "RELAY_OPENID_CONFIG_URL": "file:///etc/passwd"}, "RELAY_OPENID_CONFIG_URL"),
        ({**GOOD, "RELAY_STORE": "postgres://db"}, "RELAY_STORE"),
        ({**GOOD, "RELAY_PORT": "http"}, "RELAY_PORT"),
        ({**GOOD, "RELAY_PORT": "70000"}, "RELAY_PORT"),
        ({**GOOD, "RELAY_METRICS_PORT": "-1"}, "RELAY_METRICS_PORT"),
        ({**GOOD, "RELAY_DELIVERY_PROCESS": "thread"}, "RELAY_DELIVERY_PROCESS"),
    ],
)
def test_bad_setting_names_the_variable(env, variable):
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env)
    assert str(err.value).startswith(variable), str(err.value)


def test_relay_serve_stops_at_start_with_one_line_naming_the_variable():
    env = {"PATH": "/usr/bin:/bin", "RELAY_AUDIENCES": "api://x"}
    proc = subprocess.run([sys.executable, "-m", "relay", "serve"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["relay: configuration error: RELAY_TENANT_ID is required but not set"], proc.stderr
