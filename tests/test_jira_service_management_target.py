"""The Jira Service Management target against the fake site: Cloud and Data Center, issue and request
modes, the label + property correlation, the lagging Cloud search, transitions, Assets, failures."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.targets import Incident, Ticket
from relay.targets import jira_service_management as jsm
from relay.targets.target_config import TargetConfigError
from tests.conftest import expect_error
from tests.fakes.jira import FakeJira

KEY = "5b6c1c8e-0b7a-4a41-9f43-2d1f5a9f6c11"
SUB = "/subscriptions/11111111-2222-3333-4444-555555555555"
VM = f"{SUB}/resourcegroups/rg-web/providers/microsoft.compute/virtualmachines/web-01"
LABEL = f"azure-alert-{KEY}"


def an_incident(key: str = KEY, cis: tuple[str, ...] = (), **fields: Any) -> Incident:
    return Incident(
        correlation_key=key,
        summary="[Sev2] cpu-high on web-01",
        description="Azure Monitor alert: cpu-high\nPortal: https://portal.azure.com/#view/x\nRule: cpu-high",
        severity="Sev2",
        fields={"priority": "Medium", **fields},
        configuration_items=cis,
        resource_ids=(VM,),
    )


def make_target(fake: FakeJira, **options: Any) -> jsm.JiraServiceManagementTarget:
    cloud = fake.deployment == "cloud"
    cfg: dict[str, Any] = {
        "kind": "jira_service_management",
        "base_url": fake.url,
        "deployment": fake.deployment,
        "auth": {"type": "api_token", "email": fake.email, "token_env": "JIRA_TOKEN"} if cloud
        else {"type": "pat", "token_env": "JIRA_TOKEN"},
        "timeout_seconds": 5,
        "project_key": fake.project,
        **options,
    }
    return jsm.from_config("jira-test", cfg, env={"JIRA_TOKEN": fake.token})


@pytest.fixture(params=["cloud", "data_center"])
async def fake(request: pytest.FixtureRequest) -> AsyncIterator[FakeJira]:
    server = FakeJira(deployment=request.param)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def cloud() -> AsyncIterator[FakeJira]:
    server = FakeJira(deployment="cloud")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def target(fake: FakeJira) -> AsyncIterator[jsm.JiraServiceManagementTarget]:
    t = make_target(fake)
    yield t
    await t.close()


# -- create and find ---------------------------------------------------------------------------------

async def test_create_opens_an_issue_labelled_with_the_key_and_carrying_it_as_a_property(fake, target):
    ticket = await target.create(an_incident())
    issue = fake.issues[ticket.number]
    assert issue["fields"]["labels"] == [LABEL]
    assert issue["properties"] == {"secure-export": {"correlation_key": KEY}}
    assert issue["fields"]["priority"] == {"name": "Medium"}
    desc = issue["fields"]["description"]
    if fake.deployment == "cloud":  # v3 wants ADF; the portal link is a link mark
        assert jsm.adf_text(desc).splitlines()[0] == "Azure Monitor alert: cpu-high"
        marks = [n["marks"][0]["attrs"]["href"] for p in desc["content"] for n in p["content"] if "marks" in n]
        assert marks == ["https://portal.azure.com/#view/x"]
    else:  # v2 takes wiki markup text
        assert desc.startswith("Azure Monitor alert: cpu-high\n")
        assert "Portal: https://portal.azure.com/#view/x" in desc
    assert await target.find(an_incident()) == Ticket(id=ticket.id, number=ticket.number, resolved=False)


async def test_find_ignores_an_issue_whose_property_holds_another_key(fake, target):
    # JQL compares labels without case: "…-ABC" and "…-abc" are one label to the search, not to us.
    other = await target.create(an_incident(key="abc-1"))
    fake.issues[other.number]["fields"]["labels"] = ["azure-alert-ABC-1"]
    fake.issues[other.number]["properties"]["secure-export"] = {"correlation_key": "ABC-1"}
    assert await target.find(an_incident(key="abc-1")) is None


async def test_two_open_issues_with_one_key_is_an_error_naming_them(fake, target):
    a = await target.create(an_incident())
    b = await target.create(an_incident())
    err = await expect_error(target.find(an_incident()))
    assert not err.retryable and a.number in str(err) and b.number in str(err)


async def test_a_summary_over_255_characters_is_cut_to_what_jira_holds(fake, target):
    long = Incident(correlation_key=KEY, summary="x" * 300, description="d", severity=None)
    ticket = await target.create(long)
    assert len(fake.issues[ticket.number]["fields"]["summary"]) == jsm.SUMMARY_MAX


async def test_request_mode_raises_a_service_desk_request_and_sets_the_property_after(fake):
    t = make_target(fake, mode="request", service_desk_id=fake.service_desk_id,
                    request_type_id=fake.request_type_id, project_key=None)
    try:
        ticket = await t.create(an_incident())
        issue = fake.issues[ticket.number]
        assert issue["fields"]["description"].startswith("Azure Monitor alert")  # the JSM API takes text
        assert issue["properties"]["secure-export"] == {"correlation_key": KEY}
        assert (await t.find(an_incident())).number == ticket.number
    finally:
        await t.close()


# -- Cloud's eventually consistent search ------------------------------------------------------------

async def test_cloud_search_lagging_behind_a_create_still_finds_what_this_process_created(cloud):
    cloud.search_lag = 60.0  # the search sees nothing new for a minute
    t = make_target(cloud)
    try:
        ticket = await t.create(an_incident())
        assert await t.find(an_incident()) == Ticket(ticket.id, ticket.number, False), "reconcileIssues was not used"
        [search] = cloud.calls_to("/search/jql")
        assert search.json()["reconcileIssues"] == [int(ticket.id)]
        # Another process (a restarted relay) knows no ids: the lagging search does not show the issue yet.
        fresh = make_target(cloud)
        assert await fresh.find(an_incident()) is None
        await fresh.close()
    finally:
        await t.close()


async def test_cloud_never_calls_the_removed_search_endpoint(cloud):
    t = make_target(cloud)
    try:
        await t.find(an_incident())
    finally:
        await t.close()
    assert [c.path for c in cloud.calls] == ["/rest/api/3/search/jql"]


# -- notes, resolve, reopen ----------------------------------------------------------------------------

async def test_notes_are_internal_comments(fake, target):
    ticket = await target.create(an_incident())
    await target.note(ticket, an_incident(), "fired again at 10:05")
    [comment] = fake.comments(ticket.number)
    assert comment["internal"] is True
    assert jsm.adf_text(comment["body"]) == "fired again at 10:05"


async def test_resolve_takes_the_transition_into_done_with_a_resolution_and_reopen_goes_back(fake, target):
    ticket = await target.create(an_incident())
    await target.resolve(ticket, an_incident(), "resolved at 10:10")
    assert fake.status(ticket.number) == "Resolved"
    assert fake.issues[ticket.number]["fields"]["resolution"] == {"name": "Done"}
    assert (await target.find(an_incident())).resolved is True
    await target.reopen(ticket, an_incident(), "fired again")
    assert fake.status(ticket.number) == "Open"
    assert fake.issues[ticket.number]["history"] == ["Resolved", "comment", "Open", "comment"]


async def test_a_resolve_retried_after_it_was_applied_changes_nothing_more(fake, target):
    ticket = await target.create(an_incident())
    await target.note(ticket, an_incident(), "fired again at 10:05")
    await target.resolve(ticket, an_incident(), "resolved at 10:10")
    await target.note(ticket, an_incident(), "fired again at 10:05")  # the same note, retried
    await target.resolve(ticket, an_incident(), "resolved at 10:10")  # a crash before it was recorded
    assert fake.issues[ticket.number]["history"] == ["comment", "Resolved", "comment"]


async def test_a_resolve_status_the_workflow_does_not_offer_is_not_retryable_and_lists_the_offers(fake):
    t = make_target(fake, resolve_status="Closed")
    try:
        ticket = await t.create(an_incident())
        err = await expect_error(t.resolve(ticket, an_incident(), "x"))
    finally:
        await t.close()
    assert not err.retryable
    assert "Resolve -> Resolved" in str(err) and "resolve_status" in str(err)


TRANSITIONS = [
    {"id": "11", "name": "Start", "to": {"name": "In Progress", "statusCategory": {"key": "indeterminate"}}},
    {"id": "31", "name": "Resolve", "to": {"name": "Resolved", "statusCategory": {"key": "done"}}},
    {"id": "32", "name": "Close", "to": {"name": "Closed", "statusCategory": {"key": "done"}}},
    {"id": "21", "name": "Back", "to": {"name": "Open", "statusCategory": {"key": "new"}}},
]


@pytest.mark.parametrize(("status", "categories", "chosen"), [
    (None, ("done",), "31"),  # the first into the category
    ("closed", ("done",), "32"),  # by status name, any case
    ("Nowhere", ("done",), None),  # a named status not offered: no guess
    (None, ("indeterminate", "new"), "11"),
    (None, ("missing", "new"), "21"),
    (None, ("missing",), None),
])
def test_choose_transition(status, categories, chosen):
    got = jsm.choose_transition(TRANSITIONS, status, categories)
    assert (got or {}).get("id") == chosen


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_adf_keeps_every_non_blank_line_text(text):
    lines = [line for line in text.split("\n") if line.strip()]
    doc = jsm.adf(text)
    assert (doc["type"], doc["version"]) == ("doc", 1)
    if lines:
        assert jsm.adf_text(doc).split("\n") == lines
    else:
        assert doc["content"] == []


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\\"), max_size=200))
def test_wiki_markup_shows_the_text_as_written(text):
    markup = jsm.wiki_text(text)
    assert re.sub(r"\\(.)", r"\1", markup) == text  # Jira shows an escaped character as itself
    for word in re.split(r"[ \n]", markup):
        if not word.startswith(("https://", "http://")):
            assert not re.search(r"(?<!\\)[{}\[\]*_|^~+#!]", word), f"unescaped formatting in {word!r}"


def test_data_center_descriptions_escape_wiki_markup_and_keep_links():
    text = "Budget test_forcasted_budget *spent* {code}\nPortal: https://portal.azure.com/#view/Microsoft_Azure_x"
    assert jsm.wiki_text(text) == ("Budget test\\_forcasted\\_budget \\*spent\\* \\{code\\}\n"
                                   "Portal: https://portal.azure.com/#view/Microsoft_Azure_x")


# -- Assets --------------------------------------------------------------------------------------------

async def test_assets_object_with_the_arm_id_is_bound_and_a_missing_one_left_unbound(fake):
    obj = fake.add_asset("Virtual Machine", {"ARM ID": VM.upper()})  # AQL "=" ignores case
    options = {"ci_binding": "bind_if_found", "assets_field": "customfield_10200",
               "assets_workspace_id": fake.workspace_id, "assets_base_url": fake.assets_url}
    t = make_target(fake, **options)
    try:
        ticket = await t.create(an_incident(cis=(VM,)))
        missing = await t.create(an_incident(key="other-key", cis=(VM.replace("web-01", "web-02"),)))
    finally:
        await t.close()
    bound = fake.issues[ticket.number]["fields"]["customfield_10200"]
    if fake.deployment == "cloud":
        assert bound == [{"workspaceId": "ws-1", "id": obj["globalId"], "objectId": obj["id"]}]
    else:
        assert bound == [{"key": obj["objectKey"]}]
    assert "customfield_10200" not in fake.issues[missing.number]["fields"]


async def test_an_assets_outage_fails_the_create_so_it_is_retried(fake):
    t = make_target(fake, ci_binding="bind_if_found", assets_field="customfield_10200",
                    assets_workspace_id=fake.workspace_id, assets_base_url=fake.assets_url)
    fake.inject("status", status=503, path="aql")
    try:
        err = await expect_error(t.create(an_incident(cis=(VM,))))
    finally:
        await t.close()
    assert err.retryable and fake.issues == {}


# -- failures ----------------------------------------------------------------------------------------

async def test_429_is_retryable_with_its_retry_after(fake, target):
    fake.inject("status", status=429, retry_after="7")
    err = await expect_error(target.create(an_incident()))
    assert (err.retryable, err.retry_after, err.status) == (True, 7.0, 429)


async def test_a_5xx_is_retryable_and_a_401_is_not(fake, target):
    fake.inject("status", status=502)
    assert (await expect_error(target.find(an_incident()))).retryable
    wrong = jsm.from_config("jira-test", {**_block(fake), "auth": _auth(fake)}, env={"JIRA_TOKEN": "wrong"})
    try:
        err = await expect_error(wrong.find(an_incident()))
    finally:
        await wrong.close()
    assert (err.status, err.retryable) == (401, False)
    assert "not authorized" in str(err) and "wrong" not in str(err)


async def test_jiras_field_errors_are_in_the_message(fake, target):
    errors = {"priority": "Priority name 'X' is not valid"}
    fake.inject("status", status=400, body={"errorMessages": [], "errors": errors})
    err = await expect_error(target.create(an_incident()))
    assert not err.retryable and "priority: Priority name 'X' is not valid" in str(err)


def _auth(fake: FakeJira) -> dict[str, str]:
    if fake.deployment == "cloud":
        return {"type": "api_token", "email": fake.email, "token_env": "JIRA_TOKEN"}
    return {"type": "pat", "token_env": "JIRA_TOKEN"}


def _block(fake: FakeJira) -> dict[str, Any]:
    return {"kind": "jira_service_management", "base_url": fake.url, "deployment": fake.deployment,
            "project_key": fake.project}


# -- configuration -----------------------------------------------------------------------------------

def test_every_problem_of_a_block_is_named_by_its_key():
    cfg = {"kind": "jira_service_management", "base_url": "https://x.atlassian.net", "mode": "request",
           "label_prefix": "azure alert", "ci_binding": "bind_if_found",
           "auth": {"type": "api_token", "email": "a@b.c", "token_env": "T"}}
    with pytest.raises(TargetConfigError) as info:
        jsm.from_config("j", cfg, env={"T": "x"})
    keys = [k for k, _ in info.value.problems]
    assert keys == ["service_desk_id", "request_type_id", "label_prefix", "assets_field", "assets_workspace_id"]


def test_data_center_defaults_to_a_personal_access_token():
    t = jsm.from_config("j", {"kind": "jira_service_management", "base_url": "https://jira.example.com",
                              "deployment": "data_center", "project_key": "OPS", "auth": {"token_env": "T"}},
                        env={"T": "pat"})
    assert t.api == "/rest/api/2"
