"""The status viewer (infra/status_viewer.py) under Pulumi's mocks: off by default; when enabled, the
relay's admin port is exposed inside the environment only, the viewer proxies the status page and
nothing else, sign-in is required (Entra, client secret from Key Vault), and its identity reads one secret."""

from __future__ import annotations

import re
from typing import Any

import pytest

from infra import config
from infra.config import ConfigError
from infra.config.model import STATUS_VIEWER_IMAGE
from infra.plan import Declared, Plan
from infra.status_viewer import (
    CALLBACK_PATH,
    CLIENT_SECRET_SETTING,
    STATUS_PATH,
    VIEWER_PORT,
    StatusViewerArgs,
    nginx_config,
)
from tests.infra.harness import run_stack, stack_config, stack_value

CONTAINER_APP = "azure-native:app:ContainerApp"
AUTH_CONFIG = "azure-native:app:ContainerAppsAuthConfig"
ROLE_ASSIGNMENT = "azure-native:authorization:RoleAssignment"
VAULT_SECRET = "azure-native:keyvault:Secret"
IDENTITY = "azure-native:managedidentity:UserAssignedIdentity"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
ENABLED = {"enabled": True, "clientId": CLIENT_ID}


@pytest.fixture(scope="module")
def viewer_plan() -> Plan:
    return run_stack("dev", statusViewer=ENABLED)


def app_named(plan: Plan, suffix: str) -> Declared:
    (found,) = [r for r in plan.of_type(CONTAINER_APP) if r.inputs["containerAppName"].endswith(suffix)]
    return found


def test_off_by_default_no_viewer_and_no_internal_port_on_the_relay(stack_plan: Plan, stack: str) -> None:
    assert stack_value(stack, "statusViewer") is None, "the example stacks keep the viewer off"
    assert [r.inputs["containerAppName"] for r in stack_plan.of_type(CONTAINER_APP)] == [
        config.parse(*stack_config(stack)[:1], stack=stack).names.container_app
    ]
    assert stack_plan.of_type(AUTH_CONFIG) == []
    ingress = stack_plan.one(CONTAINER_APP).inputs["configuration"]["ingress"]
    assert "additionalPortMappings" not in ingress
    assert "statusViewerUrl" not in stack_plan.outputs


def test_the_relay_exposes_its_admin_port_inside_the_environment_only(viewer_plan: Plan) -> None:
    relay = app_named(viewer_plan, "-relay")
    ingress = relay.inputs["configuration"]["ingress"]
    port = stack_value("dev", "relay")["metricsPort"]
    assert ingress["additionalPortMappings"] == [{"external": False, "targetPort": port, "exposedPort": port}]
    # The public ingress still targets the relay's own port, with no sign-in in front of /alerts.
    assert ingress["external"] is True and ingress["targetPort"] == config.RELAY_PORT
    assert not [a for a in viewer_plan.of_type(AUTH_CONFIG) if a.inputs["containerAppName"] == relay.inputs[
        "containerAppName"]]


def test_the_viewer_is_public_over_https_only_and_requires_sign_in(viewer_plan: Plan) -> None:
    viewer = app_named(viewer_plan, "-viewer")
    ingress = viewer.inputs["configuration"]["ingress"]
    assert ingress["external"] is True and ingress["allowInsecure"] is False and ingress["targetPort"] == VIEWER_PORT
    assert "additionalPortMappings" not in ingress
    auth = viewer_plan.one(AUTH_CONFIG).inputs
    assert auth["authConfigName"] == "current" and auth["platform"] == {"enabled": True}
    assert auth["globalValidation"]["unauthenticatedClientAction"] == "RedirectToLoginPage"
    assert "excludedPaths" not in auth["globalValidation"], "no path of the viewer may skip sign-in"
    assert auth["httpSettings"] == {"requireHttps": True}
    aad = auth["identityProviders"]["azureActiveDirectory"]
    tenant = config.parse(*stack_config("dev")[:1], stack="dev").azure.tenant_id
    assert aad["registration"] == {
        "clientId": CLIENT_ID,
        "clientSecretSettingName": CLIENT_SECRET_SETTING,
        "openIdIssuer": f"https://login.microsoftonline.com/{tenant}/v2.0",
    }
    assert aad["validation"]["allowedAudiences"] == [CLIENT_ID, f"api://{CLIENT_ID}"]


def test_the_client_secret_comes_from_key_vault_never_from_state(viewer_plan: Plan) -> None:
    viewer = app_named(viewer_plan, "-viewer")
    secrets = {s["name"]: s for s in viewer.inputs["configuration"]["secrets"]}
    client = secrets[CLIENT_SECRET_SETTING]
    assert "value" not in client and client["keyVaultUrl"] and client["identity"]
    placeholder = next(s for s in viewer_plan.of_type(VAULT_SECRET)
                       if s.inputs["secretName"] == "status-viewer-client-secret")
    assert placeholder.inputs["properties"]["value"].startswith("not set yet")
    assert "properties.value" in placeholder.options.get("ignoreChanges", []), placeholder.options


def test_the_viewer_identity_reads_its_one_secret_and_nothing_else(viewer_plan: Plan) -> None:
    identity = next(r for r in viewer_plan.of_type(IDENTITY) if r.inputs["resourceName"].endswith("-viewer"))
    grants = [g for g in viewer_plan.of_type(ROLE_ASSIGNMENT) if g.name.startswith("status-viewer")]
    assert len(grants) == 1, [g.name for g in grants]
    assert grants[0].inputs["scope"].endswith("/secrets/status-viewer-client-secret")
    assert grants[0].inputs["roleDefinitionId"].endswith("/4633458b-17de-408a-b874-0445c86b69e6")
    assert identity.name.startswith("status-viewer")


def test_the_viewer_proxies_the_status_page_of_the_relay_and_nothing_else(viewer_plan: Plan) -> None:
    viewer = app_named(viewer_plan, "-viewer")
    secrets = {s["name"]: s for s in viewer.inputs["configuration"]["secrets"]}
    relay_name = app_named(viewer_plan, "-relay").inputs["containerAppName"]
    port = stack_value("dev", "relay")["metricsPort"]
    assert secrets["nginx-config"]["value"] == nginx_config(relay_name, port)
    (container,) = viewer.inputs["template"]["containers"]
    assert container["image"] == STATUS_VIEWER_IMAGE
    assert container["volumeMounts"] == [{"volumeName": "nginx-config", "mountPath": "/etc/nginx/conf.d"}]
    assert viewer.inputs["template"]["scale"] == {"minReplicas": 0, "maxReplicas": 1}


def test_the_outputs_name_the_page_and_the_redirect_uri(viewer_plan: Plan) -> None:
    assert viewer_plan.outputs["statusViewerUrl"].endswith(STATUS_PATH)
    assert viewer_plan.outputs["statusViewerRedirectUri"].endswith(CALLBACK_PATH)
    assert viewer_plan.outputs["statusViewerUrl"].startswith("https://")


def locations(conf: str) -> dict[str, str]:
    """location matcher -> its block's body."""
    return {m[1].strip(): m[2] for m in re.finditer(r"location\s+([^{]+)\{(.*?)\n    \}", conf, re.S)}


def test_nginx_config_forwards_only_status_paths_and_only_reads() -> None:
    conf = nginx_config("ca-x-dev-relay", 9090)
    blocks = locations(conf)
    assert set(blocks) == {"= /", f"= {STATUS_PATH}", f"^~ {STATUS_PATH}/", "/"}
    assert blocks["/"].strip() == "return 404;"
    assert "proxy_pass" not in blocks["= /"] and "proxy_pass" not in blocks["/"]
    for status in (f"= {STATUS_PATH}", f"^~ {STATUS_PATH}/"):
        body = blocks[status]
        assert "proxy_pass http://ca-x-dev-relay:9090;" in body
        assert 'proxy_set_header Cookie "";' in body and 'proxy_set_header Authorization "";' in body
        assert "limit_except GET HEAD { deny all; }" in body
    assert "/metrics" not in conf and "/alerts" not in conf
    assert conf.count("proxy_pass") == 2
    assert f"listen {VIEWER_PORT};" in conf and "server_tokens off;" in conf


def parse_with(viewer: Any) -> config.StackConfig:
    raw, secret_keys = stack_config("dev", statusViewer=viewer)
    return config.parse(raw, stack="dev", secret_keys=secret_keys)


def test_config_defaults_and_validation() -> None:
    assert parse_with(None).status_viewer is None
    assert parse_with({"enabled": False, "clientId": "later"}).status_viewer is None
    settings = parse_with(ENABLED).status_viewer
    assert settings is not None and settings.client_id == CLIENT_ID and settings.image == STATUS_VIEWER_IMAGE
    assert settings.secret_name == "status-viewer-client-secret"
    with pytest.raises(ConfigError, match=r"secure-export:statusViewer\.clientId.*required"):
        parse_with({"enabled": True})
    with pytest.raises(ConfigError, match=r"statusViewer\.clientId"):
        parse_with({"enabled": True, "clientId": "not-a-guid"})
    with pytest.raises(ConfigError, match=r"statusViewer\.image"):
        parse_with({**ENABLED, "image": "nginx"})
    with pytest.raises(ConfigError, match=r"statusViewer\.clientSecretName"):
        parse_with({**ENABLED, "clientSecretName": "Bad_Name"})
    with pytest.raises(ConfigError, match=r"statusViewer\.port.*unknown key"):
        parse_with({**ENABLED, "port": 80})


def test_component_args_are_validated_before_anything_is_declared() -> None:
    cfg = parse_with(ENABLED)
    assert cfg.status_viewer is not None
    base = dict(names=cfg.names, azure=cfg.azure, resource_group_name="rg", tags={}, settings=cfg.status_viewer,
                environment_id="env", key_vault_id="kv", key_vault_name="kv")
    StatusViewerArgs(**base, relay_app_name="ca-a-dev-relay", admin_port=9090).validate()
    with pytest.raises(ValueError, match="relay_app_name"):
        StatusViewerArgs(**base, relay_app_name="Not A Name", admin_port=9090).validate()
    with pytest.raises(ValueError, match="admin_port"):
        StatusViewerArgs(**base, relay_app_name="ca-a-dev-relay", admin_port=VIEWER_PORT).validate()
