"""`make plan STACK=<name>`: what `pulumi up` would declare for a stack, without cloud or credentials.

Runs infra/__main__.py under Pulumi's mock runtime with the config of stacks/Pulumi.<name>.yaml and
prints every resource (type, name, parent, dependencies, options, inputs) and the stack outputs as
sorted, stable JSON on standard output; notes go to standard error. `main` also runs the relay's own
`relay check-config` on the relay YAML the Container App would mount (infra/relay_check.py) and fails,
with the relay's file:line messages, when the relay would refuse it. Values only the cloud knows are
shown as `${<resource name>.<attribute>}`, secrets as `[secret]`: the stack file holds only their
ciphertext, which needs the Pulumi CLI to decrypt. The tests run the program through `run` as well.

Usage: python -m infra.plan <stack>
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import runpy
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc, settings
from pulumi.runtime.stack import run_in_stack
from pulumi.runtime.sync_await import _sync_await  # private API: see run()

from infra import relay_check
from infra.config import PROJECT, ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
PROGRAM_DIR = REPO_ROOT / "infra"
STACKS_DIR = REPO_ROOT / "stacks"
# The bootstrap stack (the privileged Entra part): its own project, program and stack files.
BOOTSTRAP_DIR = PROGRAM_DIR / "bootstrap"
BOOTSTRAP_STACKS_DIR = STACKS_DIR / "bootstrap"
SECRET = "[secret]"

# The Azure name input of each azure-native type: the provider echoes it back as `name`.
_NAME_INPUTS = {
    "azure-native:resources:ResourceGroup": "resourceGroupName",
    "azure-native:operationalinsights:Workspace": "workspaceName",
    "azure-native:storage:StorageAccount": "accountName",
    "azure-native:storage:Queue": "queueName",
    "azure-native:storage:Table": "tableName",
    "azure-native:storage:BlobContainer": "containerName",
    "azure-native:keyvault:Vault": "vaultName",
    "azure-native:keyvault:Secret": "secretName",
    "azure-native:managedidentity:UserAssignedIdentity": "resourceName",
    "azure-native:containerregistry:Registry": "registryName",
    "azure-native:app:ManagedEnvironment": "environmentName",
    "azure-native:app:ContainerApp": "containerAppName",
    "azure-native:monitor:ActionGroup": "actionGroupName",
    "azure-native:monitor:MetricAlert": "ruleName",
    "azure-native:monitor:ScheduledQueryRule": "ruleName",
    "azure-native:monitor:ActivityLogAlert": "activityLogAlertName",
    "azure-native:storage:ManagementPolicy": "managementPolicyName",
    "azure-native:network:VirtualNetwork": "virtualNetworkName",
    "azure-native:network:Subnet": "subnetName",
    "azure-native:network:PrivateEndpoint": "privateEndpointName",
    "azure-native:privatedns:PrivateZone": "privateZoneName",
}


def _unknown(resource: str, attribute: str) -> str:
    """A value only the cloud knows, named so that a reader sees where it comes from."""
    return f"${{{resource}.{attribute}}}"


@dataclass
class Declared:
    """One resource as the program declared it."""

    urn: str
    type: str
    name: str
    custom: bool
    parent: str | None
    dependencies: frozenset[str]
    options: dict[str, Any]
    inputs: dict[str, Any]
    secret_inputs: frozenset[str] = frozenset()  # inputs Pulumi encrypts in the state
    outputs: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


@dataclass
class Plan:
    """Everything one program run declared."""

    project: str
    stack: str
    resources: list[Declared]
    calls: list[tuple[str, dict[str, Any]]]
    outputs: dict[str, Any]

    def of_type(self, type_: str) -> list[Declared]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str, name: str | None = None) -> Declared:
        found = [r for r in self.of_type(type_) if name is None or r.name == name]
        if len(found) != 1:
            names = sorted(r.name for r in self.of_type(type_))
            raise LookupError(f"expected one {type_} named {name or '*'} in stack {self.stack}, found {names}")
        return found[0]

    def by_urn(self, urn: str) -> Declared:
        return next(r for r in self.resources if r.urn == urn)

    def to_json(self) -> str:
        def label(urn: str) -> str:
            resource = self.by_urn(urn)
            return f"{resource.type}::{resource.name}"

        resources = []
        for r in sorted(self.resources, key=lambda r: (r.type, r.name)):
            entry: dict[str, Any] = {"type": r.type, "name": r.name}
            if r.parent and not r.parent.endswith(f"::{PROJECT}-{self.stack}"):
                entry["parent"] = label(r.parent)
            if r.custom:
                entry["dependsOn"] = sorted(label(d) for d in r.dependencies)
                entry["inputs"] = r.inputs
                if r.secret_inputs:
                    entry["secretInputs"] = sorted(r.secret_inputs)
            if r.options:
                entry["options"] = r.options
            resources.append(entry)
        document = {
            "project": self.project,
            "stack": self.stack,
            "resources": resources,
            "invokes": sorted(
                ({"token": t, "args": a} for t, a in self.calls), key=lambda c: json.dumps(c, sort_keys=True)
            ),
            "outputs": self.outputs,
        }
        return json.dumps(_tidy(document), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _tidy(value: Any) -> Any:
    """Whole numbers as integers: Pulumi's wire format turns every number into a float."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _tidy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_tidy(v) for v in value]
    return value


class _RecordingMocks(pulumi.runtime.Mocks):
    """Echo each resource's inputs as its outputs, plus the attributes Azure and Entra compute."""

    def __init__(self) -> None:
        self.resources: dict[str, Declared] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.request = threading.local()  # the RegisterResource request being served on this thread

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        request = self.request.current
        name = args.name
        inputs = _reveal(args.inputs)
        outputs = dict(inputs)
        outputs["name"] = inputs.get(_NAME_INPUTS.get(args.typ, ""), name)
        identity = outputs.get("identity")
        if isinstance(identity, dict) and isinstance(identity.get("userAssignedIdentities"), list):
            # azure-native v3 takes a list of identity ids and returns a map keyed by them.
            outputs["identity"] = {
                **identity,
                "userAssignedIdentities": {i: {} for i in identity["userAssignedIdentities"]},
            }
        resource_id = _unknown(name, "id")
        match args.typ:
            case "azuread:index/application:Application":
                outputs.update(
                    clientId=_unknown(name, "clientId"),
                    objectId=_unknown(name, "objectId"),
                    appRoleIds={role["value"]: role["id"] for role in inputs.get("appRoles", [])},
                )
                resource_id = f"/applications/{outputs['objectId']}"
            case "azuread:index/servicePrincipal:ServicePrincipal":
                outputs.update(objectId=_unknown(name, "objectId"))
            case "azure-native:managedidentity:UserAssignedIdentity":
                outputs.update(clientId=_unknown(name, "clientId"), principalId=_unknown(name, "principalId"))
            case "azure-native:operationalinsights:Workspace":
                outputs.update(customerId=_unknown(name, "customerId"))
            case "azure-native:containerregistry:Registry":
                outputs.update(loginServer=f"{outputs['name']}.azurecr.io")
            case "azure-native:keyvault:Vault":
                outputs["properties"] = {
                    **outputs["properties"],
                    "vaultUri": f"https://{outputs['name']}.vault.azure.net/",
                }
            case "azure-native:keyvault:Secret":
                uri = _unknown(name, "properties.secretUri")
                outputs["properties"] = {
                    **outputs["properties"],
                    "secretUri": uri,
                    "secretUriWithVersion": f"{uri}/<version>",
                }
            case "azure-native:app:ContainerApp":
                configuration = outputs["configuration"]
                ingress = {**configuration["ingress"], "fqdn": _unknown(name, "configuration.ingress.fqdn")}
                outputs["configuration"] = {**configuration, "ingress": ingress}
            case "random:index/randomString:RandomString":
                outputs.update(result=_unknown(name, "result"))
            case "docker-build:index:Image":
                outputs.update(ref=_unknown(name, "ref"), digest=_unknown(name, "digest"))
        custom = bool(args.custom)  # components reach the mocks too; they have no inputs of their own
        self.resources[request.urn] = Declared(
            urn=request.urn,
            type=args.typ,
            name=name,
            custom=custom,
            parent=request.parent or None,
            dependencies=frozenset(request.dependencies) if custom else frozenset(),
            options=_options(request),
            inputs=inputs if custom else {},
            secret_inputs=frozenset(k for k, v in args.inputs.items() if _is_secret(v)),
            outputs=outputs if custom else {},
            id=resource_id if custom else None,
        )
        return resource_id, outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict:
        self.calls.append((args.token, dict(args.args)))
        match args.token:
            case "azuread:index/getClientConfig:getClientConfig":
                return {
                    "objectId": _unknown("deploying-identity", "objectId"),
                    "clientId": _unknown("deploying-identity", "clientId"),
                    "tenantId": _unknown("deploying-identity", "tenantId"),
                }
            case "azuread:index/getServicePrincipal:getServicePrincipal":
                return {"objectId": _unknown("azure-monitor-service-principal", "objectId"), **args.args}
        raise NotImplementedError(f"infra/plan.py has no mock for the invoke {args.token}; add one")


def _is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(rpc._special_sig_key) == rpc._special_secret_sig


def _reveal(value: Any) -> Any:
    """The value with Pulumi's secret wrappers removed (mocks see secrets in their wire form)."""
    if _is_secret(value):
        return _reveal(value["value"])
    if isinstance(value, dict):
        return {k: _reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_reveal(v) for v in value]
    return value


def _options(request: Any) -> dict[str, Any]:
    """The resource options that change what `pulumi up` or `destroy` does, when set."""
    options: dict[str, Any] = {}
    if request.HasField("retainOnDelete") and request.retainOnDelete:
        options["retainOnDelete"] = True
    if request.protect:
        options["protect"] = True
    if request.ignoreChanges:
        options["ignoreChanges"] = sorted(request.ignoreChanges)
    return options


class _RecordingMonitor(pulumi_mocks.MockMonitor):
    """The mock monitor, keeping what the mocks are not told: parent, dependencies, options, and
    the stack's outputs."""

    def __init__(self, mocks: _RecordingMocks, stack_urn: str) -> None:
        super().__init__(mocks)
        self._recording = mocks
        self._stack_urn = stack_urn
        self.stack_outputs: dict[str, Any] = {}

    def RegisterResource(self, request: Any) -> Any:
        urn = self.make_urn(request.parent, request.type, request.name)
        self._recording.request.current = _Request(urn, request)
        return super().RegisterResource(request)

    def RegisterResourceOutputs(self, request: Any) -> Any:
        if request.urn == self._stack_urn:
            self.stack_outputs = rpc.deserialize_properties(request.outputs)
        return super().RegisterResourceOutputs(request)


class _Request:
    """A RegisterResource request with the URN the monitor gives it."""

    def __init__(self, urn: str, request: Any) -> None:
        self.urn = urn
        self.parent = request.parent
        self.dependencies = list(request.dependencies)
        self._request = request

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


@contextlib.contextmanager
def _program_directory(program_dir: Path) -> Iterator[None]:
    """Pulumi runs a `main:` directory program from inside that directory."""
    previous = Path.cwd()
    os.chdir(program_dir)
    try:
        yield
    finally:
        os.chdir(previous)


class ProgramFailed(Exception):
    """The program raised; `plan` holds what it had declared by then."""

    def __init__(self, cause: BaseException, plan: Plan) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.plan = plan


def run(
    stack: str,
    raw_config: Mapping[str, str],
    secret_keys: Sequence[str] = (),
    *,
    project: str = PROJECT,
    program_dir: Path = PROGRAM_DIR,
    program: Path | None = None,
) -> Plan:
    """Run a program (infra/__main__.py unless told: `program_dir`'s `__main__.py`, or another `program`
    file, as bench/infra.py does) under mocks with CLI-style config (full keys, structured values as JSON).
    Raises ProgramFailed if the program raises."""
    program = (program or program_dir / "__main__.py").resolve()  # before the run changes directory
    mocks = _RecordingMocks()
    monitor = _RecordingMonitor(mocks, f"urn:pulumi:{stack}::{project}::pulumi:pulumi:Stack::{project}-{stack}")
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    failure: BaseException | None = None
    try:
        pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=False, monitor=monitor)
        # set_mocks installs a root stack for programs run inline; run_in_stack brings its own, as
        # `pulumi up` does, and collects the exports on it.
        settings.set_root_resource(None)  # type: ignore[arg-type]
        pulumi.runtime.set_all_config(dict(raw_config), list(secret_keys))
        with _program_directory(program.parent):
            # Private API, used on purpose: Pulumi's own mock runtime drives a program with this
            # re-entrant loop pump (pulumi.runtime.mocks, its `test` decorator) and calls it again from
            # inside the program. pyproject.toml pins pulumi exactly, so an upgrade that moves it fails
            # `make plan` and every infra test at once, in the upgrade's own change.
            _sync_await(run_in_stack(lambda: runpy.run_path(str(program), run_name="__main__")))
    except Exception as error:  # reported with the partial plan below
        failure = error
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    plan = Plan(
        project=project,
        stack=stack,
        resources=list(mocks.resources.values()),
        calls=mocks.calls,
        outputs=monitor.stack_outputs,
    )
    if failure is not None:
        raise ProgramFailed(failure, plan) from failure
    return plan


def azure_name_input(type_: str) -> str | None:
    """The input that carries a resource type's Azure name: changing it replaces the resource."""
    return _NAME_INPUTS.get(type_)


def stack_names(stacks_dir: Path | None = None) -> list[str]:
    """The stacks with a file in `stacks_dir` (default: the main stack's, STACKS_DIR)."""
    files = (stacks_dir or STACKS_DIR).glob("Pulumi.*.yaml")
    return sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in files)


def stack_file_config(stack: str, stacks_dir: Path | None = None) -> tuple[dict[str, str], list[str]]:
    """A stack file's config as the CLI hands it to the program: strings, structured values as JSON
    text. Ciphertext (`secure:`) cannot be decrypted here, so it reads as the placeholder."""
    stacks_dir = stacks_dir or STACKS_DIR
    path = stacks_dir / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"no stack file {os.path.relpath(path, REPO_ROOT)}; stacks: {', '.join(stack_names(stacks_dir))}"
        )
    document = yaml.safe_load(path.read_text()) or {}
    raw: dict[str, str] = {}
    secret_keys = []
    for key, value in (document.get("config") or {}).items():
        plain, secret = _decrypt_placeholder(value)
        if secret:
            secret_keys.append(key)
        raw[key] = plain if isinstance(plain, str) else json.dumps(plain)
    return raw, secret_keys


def _decrypt_placeholder(value: Any) -> tuple[Any, bool]:
    if isinstance(value, dict) and set(value) == {"secure"}:
        return SECRET, True
    if isinstance(value, dict):
        pairs = {k: _decrypt_placeholder(v) for k, v in value.items()}
        return {k: v for k, (v, _) in pairs.items()}, any(s for _, s in pairs.values())
    if isinstance(value, list):
        items = [_decrypt_placeholder(v) for v in value]
        return [v for v, _ in items], any(s for _, s in items)
    return value, False


def run_stack(stack: str) -> Plan:
    """Plan one stack file."""
    return run(stack, *stack_file_config(stack))


def run_bootstrap(stack: str, raw_config: Mapping[str, str] | None = None) -> Plan:
    """Run the bootstrap program (infra/bootstrap) on its stack file, or on `raw_config`."""
    from infra.config.bootstrap import BOOTSTRAP_PROJECT

    if raw_config is None:
        raw_config, _ = stack_file_config(stack, BOOTSTRAP_STACKS_DIR)
    return run(stack, raw_config, project=BOOTSTRAP_PROJECT, program_dir=BOOTSTRAP_DIR)


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1:
        print(f"usage: python -m infra.plan <stack>; stacks: {', '.join(stack_names())}", file=sys.stderr)
        return 2
    stack = argv[0]
    print(f"plan: running infra/__main__.py under mocks for stack {stack!r}", file=sys.stderr)
    try:
        plan = run_stack(stack)
    except (ConfigError, FileNotFoundError, ProgramFailed) as error:
        print(f"plan: {error}", file=sys.stderr)
        return 1
    relay_yaml = relay_check.mounted_config(plan.one("azure-native:app:ContainerApp").inputs)
    verdict = relay_check.check(relay_yaml)
    for line in relay_check.report(verdict, relay_yaml):
        print(f"plan: {line}", file=sys.stderr)
    if not verdict.ok:
        return 1
    sys.stdout.write(plan.to_json())
    custom = sum(1 for r in plan.resources if r.custom)
    print(f"plan: {custom} resources in {len(plan.resources) - custom} components", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
