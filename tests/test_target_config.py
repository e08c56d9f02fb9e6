"""Reading a target block: one option set per kind (its dataclass), the shared bounds of relay.schema, and
every problem of a block collected, as data, before one TargetConfigError is raised."""

from __future__ import annotations

import pytest

from relay.schema import MAX_CONCURRENCY, TIMEOUT_SECONDS
from relay.targets import TARGET_MODULES, build_target, load_kind
from relay.targets.target_config import TargetConfigError, option_keys
from tests.conftest import MINIMAL_TARGET_BLOCKS, TARGET_ENV


def problems(kind: str, env: dict[str, str] | None = None, **changes) -> list[tuple[str, str]]:
    block = {**MINIMAL_TARGET_BLOCKS[kind], **changes}
    with pytest.raises(TargetConfigError) as info:
        build_target("t", block, env=TARGET_ENV if env is None else env)
    return info.value.problems


@pytest.mark.parametrize("kind", list(TARGET_MODULES))
def test_a_kinds_option_keys_are_the_fields_of_its_options_dataclass(kind):
    module = load_kind(kind)
    assert module.OPTION_KEYS == option_keys(module.TARGET_CLASS.options_class)


@pytest.mark.parametrize("kind", ["servicenow", "bmc_helix", "request_tracker"])
def test_options_left_out_take_the_dataclass_defaults(kind):
    target = build_target("t", MINIMAL_TARGET_BLOCKS[kind], env=TARGET_ENV)
    assert target.options == target.options_class()


def test_every_problem_of_a_block_is_collected_with_its_key():
    found = problems("servicenow", base_url="http://example.com", ci_binding="always", close_kode="x",
                     auth={"type": "basic", "username": "relay"})
    assert [key for key, _ in found] == ["close_kode", "base_url", "ci_binding", "auth.password_env"]
    assert ("auth.password_env", "is required") in found


def test_the_text_is_one_line_per_problem_naming_the_target_and_the_key():
    error = TargetConfigError("snow", [("auth.password_env", "is required"), ("", "the target must be a mapping")])
    assert str(error).splitlines() == ["target 'snow': auth.password_env is required",
                                       "target 'snow': the target must be a mapping"]
    assert error.target == "snow"


def test_a_missing_auth_block_is_one_complaint_not_one_per_key_it_would_hold():
    block = {k: v for k, v in MINIMAL_TARGET_BLOCKS["servicenow"].items() if k != "auth"}
    with pytest.raises(TargetConfigError) as info:
        build_target("t", block, env=TARGET_ENV)
    assert info.value.problems == [("auth", "is required")]


def test_a_wrong_auth_type_is_one_complaint_not_one_per_key_of_the_intended_type():
    found = problems("servicenow", auth={"type": "oauth2", "client_id": "c", "client_secret_env": "S"})
    assert found == [("auth.type", "must be one of basic, oauth (got 'oauth2')")]


@pytest.mark.parametrize(("key", "value", "bound"), [
    ("timeout_seconds", 0.05, TIMEOUT_SECONDS),
    ("timeout_seconds", 601, TIMEOUT_SECONDS),
    ("max_concurrency", 0, MAX_CONCURRENCY),
    ("max_concurrency", 257, MAX_CONCURRENCY),
    ("max_concurrency", 2.5, MAX_CONCURRENCY),
])
def test_timeout_and_concurrency_are_checked_against_the_bounds_of_relay_schema(key, value, bound):
    assert problems("forward", **{key: value}) == [(key, f"must be {bound.describe()} (got {value!r})")]


def test_the_bounds_themselves_are_accepted():
    target = build_target("t", {**MINIMAL_TARGET_BLOCKS["request_tracker"], "timeout_seconds": TIMEOUT_SECONDS.high,
                                "max_concurrency": MAX_CONCURRENCY.high}, env=TARGET_ENV)
    assert target.http.timeout.total == TIMEOUT_SECONDS.high and target.http.max_connections == MAX_CONCURRENCY.high


def test_an_unparseable_url_is_a_problem_of_base_url():
    assert problems("servicenow", base_url="https://[::1") == [("base_url", "must be an https URL (not shown)")]
