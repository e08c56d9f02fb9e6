"""infra.networking: the VNet split, and the ActionGroup ranges taken from Microsoft's service tags file
(the refresh step of docs/deploy.md)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infra import config, networking
from tests.infra.harness import stack_config


def service_tags(*tags: tuple[str, list[str]], change: int = 42) -> dict:
    """A document shaped like ServiceTags_Public_<date>.json: `values` of {name, id, properties}."""
    return {
        "changeNumber": change,
        "cloud": "Public",
        "values": [
            {"name": name, "id": name, "properties": {"changeNumber": 7, "addressPrefixes": prefixes}}
            for name, prefixes in tags
        ],
    }


SAMPLE = service_tags(
    ("ActionGroup.WestEurope", ["51.144.0.0/28"]),
    ("ActionGroup", ["20.21.22.0/25", "20.21.22.128/25", "2603:1030:c06:5::/64", "13.66.60.119/32"]),
    ("AzureMonitor", ["10.0.0.0/8"]),
)


def test_action_group_ranges_are_the_global_tags_ipv4_prefixes_collapsed_and_sorted() -> None:
    # The regional tag is a subset and other tags are not Azure Monitor's action groups; IPv6 is left
    # out because Container Apps ingress rules take IPv4 only; adjacent halves collapse into one rule.
    assert networking.action_group_ranges(SAMPLE) == ["13.66.60.119/32", "20.21.22.0/24"]


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        (service_tags(("AzureMonitor", ["10.0.0.0/8"])), "no 'ActionGroup' tag"),
        (service_tags(("ActionGroup", ["2603:1030:c06:5::/64"])), "lists no IPv4 range"),
        ({}, "no 'ActionGroup' tag"),
    ],
)
def test_a_file_without_usable_action_group_ranges_is_refused(document: dict, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        networking.action_group_ranges(document)


def test_the_command_prints_a_stack_file_snippet_the_config_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ServiceTags_Public_20261130.json"
    path.write_text(json.dumps(SAMPLE))
    assert networking.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "change number 42" in out and "ServiceTags_Public_20261130.json" in out
    import yaml

    snippet = yaml.safe_load(out)
    ranges = snippet["secure-export:network"]["ingressAllowedRanges"]
    assert ranges == ["13.66.60.119/32", "20.21.22.0/24"]
    raw, secret_keys = stack_config("dev", network={"ingressAllowedRanges": ranges})
    parsed = config.parse(raw, stack="dev", secret_keys=secret_keys)
    assert parsed.network.ingress_allowed_ranges == tuple(ranges)


def test_the_command_names_the_file_it_cannot_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tags.json"
    path.write_text(json.dumps(service_tags(("AzureMonitor", ["10.0.0.0/8"]))))
    assert networking.main([str(path)]) == 1
    assert f"{path}: the service tags file has no 'ActionGroup' tag" in capsys.readouterr().err
    assert networking.main([]) == 2


@given(
    address=st.integers(min_value=0, max_value=2**32 - 1),
    length=st.integers(min_value=16, max_value=networking.SMALLEST_ENVIRONMENT_SUBNET - 1),
)
def test_address_space_splits_into_two_disjoint_halves_of_at_least_27(address: int, length: int) -> None:
    prefix = ipaddress.IPv4Network((address, length), strict=False)
    environment, endpoints = map(ipaddress.IPv4Network, networking.split_address_space(str(prefix)))
    assert environment.prefixlen == endpoints.prefixlen == length + 1 <= networking.SMALLEST_ENVIRONMENT_SUBNET
    assert environment.subnet_of(prefix) and endpoints.subnet_of(prefix)
    assert not environment.overlaps(endpoints)
    assert environment.num_addresses + endpoints.num_addresses == prefix.num_addresses


@pytest.mark.parametrize("prefix", ["10.0.0.0/27", "10.0.0.0/32"])
def test_address_space_too_small_for_a_workload_profiles_subnet_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="at least /27"):
        networking.split_address_space(prefix)
