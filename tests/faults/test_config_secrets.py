"""Issue 12 item 9: configuration errors never echo a secret (a secret pasted into `password_env`, credentials
or a query string in `base_url`, an account key in RELAY_STORE), and `https://user:pw@host` is refused.
Both ways a configuration is read are checked: building the targets at start, and `relay check-config`."""

from __future__ import annotations

from typing import Any

import pytest

from relay.delivery.config import ConfigError, load_config
from relay.settings import Settings, SettingsError
from relay.targets import build_target
from relay.targets.target_config import TargetConfigError

SECRET = "Zq7-hunter2-SECRET-9f3a"
CASES: dict[str, int] = {}


def sn(**block: Any) -> dict[str, Any]:
    return {"kind": "servicenow", "base_url": "https://example.service-now.com",
            "auth": {"type": "basic", "username": "relay", "password_env": "SN_PASSWORD"}, **block}


BLOCKS = {
    "secret pasted into password_env": sn(auth={"type": "basic", "username": "relay", "password_env": SECRET}),
    "secret pasted into client_secret_env": sn(auth={"type": "oauth", "client_id": "c",
                                                     "client_secret_env": f"{SECRET} "}),
    "password in base_url": sn(base_url=f"https://relay:{SECRET}@example.service-now.com"),
    "user and password over http": sn(base_url=f"http://relay:{SECRET}@127.0.0.1:8080"),
    "token in the query": sn(base_url=f"https://example.service-now.com/?sysparm_token={SECRET}"),
    "token in a non-https URL": sn(base_url=f"ftp://example.com/?k={SECRET}"),
    "number where a secret's name goes": sn(auth={"type": "basic", "username": "relay", "password_env": 12345}),
}


@pytest.mark.parametrize("label", list(BLOCKS))
def test_target_config_errors_never_echo_the_secret(label):
    with pytest.raises(TargetConfigError) as err:
        build_target("snow", BLOCKS[label], env={"SN_PASSWORD": "pw", SECRET: "x"})
    text = str(err.value)
    assert SECRET not in text and "12345" not in text, f"{label}: the error shows the secret: {text}"
    CASES["target config errors without the secret"] = CASES.get("target config errors without the secret", 0) + 1


@pytest.mark.parametrize("label", list(BLOCKS))
def test_check_config_never_echoes_the_secret(tmp_path, label):
    import yaml

    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump({"targets": {"snow": BLOCKS[label]}, "routes": [{"target": "snow"}]}))
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    text = "\n".join(p.format(str(path)) for p in err.value.problems)
    assert SECRET not in text, f"{label}: check-config shows the secret: {text}"
    assert "base_url" in text or "_env" in text, f"{label}: the problem must name the key: {text}"
    CASES["check-config errors without the secret"] = CASES.get("check-config errors without the secret", 0) + 1


def test_userinfo_in_base_url_is_refused_even_with_https():
    with pytest.raises(TargetConfigError, match="user:password@"):
        build_target("snow", sn(base_url="https://user:pw@example.service-now.com"), env={"SN_PASSWORD": "pw"})


@pytest.mark.parametrize("store", [f"AccountKey={SECRET};AccountName=x", f"accountname=x;AccountKey={SECRET}",
                                   f"sqlite:/{SECRET}", SECRET])
def test_relay_store_error_shows_none_of_the_value(store):
    with pytest.raises(SettingsError, match="RELAY_STORE") as err:
        Settings.from_env({"RELAY_TENANT_ID": "11111111-2222-4333-8444-555555555555", "RELAY_AUDIENCES": "api://x",
                           "RELAY_STORE": store})
    assert SECRET[:4] not in str(err.value), f"RELAY_STORE error shows the key: {err.value}"
    CASES["RELAY_STORE errors without the key"] = CASES.get("RELAY_STORE errors without the key", 0) + 1


def test_report_config_secret_counts(fault_report):
    assert CASES, "run with the tests above"
    fault_report("config errors and secrets", "; ".join(f"{n} {group}" for group, n in sorted(CASES.items())))
