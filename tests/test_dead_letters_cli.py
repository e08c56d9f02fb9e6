"""`relay dead-letters list` and `relay dead-letters replay [ID | --all]` against a real SQLite store."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.alerts import parse_alert_json
from relay.cli import main
from relay.delivery.dead_letters import failed_targets
from relay.store import DeadLetter, Event
from relay.store.sqlite import SqliteStore
from tests.conftest import SAMPLES


def body_for(n: int) -> bytes:
    doc = json.loads((SAMPLES / "testaction-metric-static-fired.json").read_bytes())
    doc["data"]["essentials"]["alertId"] = (
        f"/subscriptions/s/providers/Microsoft.AlertsManagement/alerts/00000000-0000-4000-8000-{n:012d}"
    )
    return json.dumps(doc).encode()


async def seed(db, errors: list[str]) -> list[str]:
    """Accept one event per error, claim them, and dead-letter each with its error; returns the ids."""
    store = SqliteStore(db)
    await store.open()
    try:
        for n in range(len(errors)):
            body = body_for(n)
            await store.accept(Event.from_alert(parse_alert_json(body), body))
        claims = sorted(await store.claim(10, 30), key=lambda c: int(c.handle))
        for claim, error in zip(claims, errors, strict=True):
            await store.dead_letter(claim, error)
        return [d.id for d in await store.dead_letters()]
    finally:
        await store.close()


async def state(db) -> tuple[int, list[str]]:
    store = SqliteStore(db)
    await store.open()
    try:
        return await store.pending(), [d.id for d in await store.dead_letters()]
    finally:
        await store.close()


@pytest.fixture
def db(tmp_path):
    return tmp_path / "relay.db"


def run(*args: str) -> int:
    return main(list(args))


def test_list_shows_each_dead_letter_with_its_error(db, capsys):
    ids = asyncio.run(seed(db, ["snow: create failed: HTTP 403 (the account lacks a role)", "HTTP 400 bad field"]))
    assert run("dead-letters", "--store", f"sqlite:///{db}", "list") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["ID", "DEAD", "AT", "(UTC)", "ATTEMPTS", "CONDITION", "TARGET", "ALERT", "ERROR"]
    assert out[1].split()[0] == ids[0] and "HTTP 403 (the account lacks a role)" in out[1]
    assert out[1].split()[4] == "snow" and out[2].split()[4] == "-", "the target column names the failed target"
    assert "00000000-0000-4000-8000-000000000000" in out[1] and "Fired" in out[1]
    assert out[2].split()[0] == ids[1] and out[2].endswith("HTTP 400 bad field")


def test_list_json_gives_one_object_per_line(db, capsys):
    asyncio.run(seed(db, ["boom"]))
    assert run("dead-letters", "--store", f"sqlite:///{db}", "list", "--json") == 0
    [line] = capsys.readouterr().out.splitlines()
    record = json.loads(line)
    assert record["error"] == "boom" and record["attempts"] == 1 and record["condition"] == "Fired"
    assert record["alert_id"].endswith("00000000-0000-4000-8000-000000000000")


def test_store_comes_from_relay_store_when_not_given(db, capsys, monkeypatch):
    asyncio.run(seed(db, ["boom"]))
    monkeypatch.setenv("RELAY_STORE", f"sqlite:///{db}")
    assert run("dead-letters", "list") == 0
    assert "boom" in capsys.readouterr().out


def test_empty_store_says_so(db, capsys):
    asyncio.run(seed(db, []))
    assert run("dead-letters", "--store", f"sqlite:///{db}", "list") == 0
    assert capsys.readouterr().out.strip() == "no dead letters"


def test_replay_one_puts_it_back_in_the_queue(db, capsys):
    ids = asyncio.run(seed(db, ["a", "b"]))
    assert run("dead-letters", "--store", f"sqlite:///{db}", "replay", ids[1]) == 0
    assert "replayed 1 dead letter" in capsys.readouterr().out
    assert asyncio.run(state(db)) == (1, [ids[0]])


def test_replay_all(db, capsys):
    asyncio.run(seed(db, ["a", "b", "c"]))
    assert run("dead-letters", "--store", f"sqlite:///{db}", "replay", "--all") == 0
    assert "replayed 3 dead letters" in capsys.readouterr().out
    assert asyncio.run(state(db)) == (3, [])


def test_replay_with_an_unknown_id_replays_nothing_and_fails(db, capsys):
    ids = asyncio.run(seed(db, ["a"]))
    assert run("dead-letters", "--store", f"sqlite:///{db}", "replay", ids[0], "999") == 1
    assert "no dead letter with id '999'" in capsys.readouterr().err
    assert asyncio.run(state(db)) == (0, ids)


@pytest.mark.parametrize("args", [["replay"], ["replay", "1", "--all"]])
def test_replay_needs_ids_or_all_but_not_both(db, args, capsys):
    with pytest.raises(SystemExit) as info:
        run("dead-letters", "--store", f"sqlite:///{db}", *args)
    assert info.value.code == 2
    assert "give dead letter ids or --all" in capsys.readouterr().err


def test_unsupported_store_url_exits_2(capsys):
    assert run("dead-letters", "--store", "mysql://x", "list") == 2
    assert "unsupported store" in capsys.readouterr().err


@pytest.mark.parametrize("args", [
    ["dead-letters", "--store", "{url}", "list"],
    ["dead-letters", "list", "--store", "{url}"],
])
def test_store_option_goes_before_or_after_the_subcommand(db, capsys, monkeypatch, args):
    asyncio.run(seed(db, ["boom"]))
    monkeypatch.setenv("RELAY_STORE", "sqlite:///elsewhere-that-does-not-exist.db")
    assert run(*[a.format(url=f"sqlite:///{db}") for a in args]) == 0
    assert "boom" in capsys.readouterr().out


@pytest.mark.parametrize("action", [["list"], ["show", "1"], ["replay", "--all"]])
def test_a_wrong_store_path_is_an_error_and_creates_nothing(tmp_path, capsys, action):
    missing = tmp_path / "typo" / "relay.db"
    assert run("dead-letters", *action, "--store", f"sqlite:///{missing}") == 2
    err = capsys.readouterr().err
    assert f"no store at {missing}" in err and "nothing was created" in err
    assert not missing.exists() and not missing.parent.exists(), "a read-only command created a store"


def test_a_file_that_is_not_a_relay_store_is_refused_and_left_alone(tmp_path, capsys):
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE notes (x)")
    conn.commit()
    conn.close()
    before = other.read_bytes()
    assert run("dead-letters", "list", "--store", f"sqlite:///{other}") == 2
    assert "is not a relay store (it has no events table)" in capsys.readouterr().err
    assert other.read_bytes() == before, "the command wrote to a file that is not a relay store"


def test_show_prints_everything_about_one_dead_letter_and_how_to_replay_it(db, capsys):
    error = "gave up after 5 attempts: rt: create failed: HTTP 503; snow: create failed: timeout"
    ids = asyncio.run(seed(db, [error, "other"]))
    assert run("dead-letters", "show", ids[0], "--store", f"sqlite:///{db}") == 0
    out = capsys.readouterr().out
    assert "targets" in out and "rt, snow" in out, out
    assert error in out, "show prints the whole error"
    assert f"relay dead-letters replay {ids[0]}" in out
    assert "00000000-0000-4000-8000-000000000000" in out and "Fired" in out
    severity = json.loads(body_for(0))["data"]["essentials"]["severity"]
    assert f"severity {severity}" in out, out


def test_show_json_carries_the_alert_and_the_replay_command(db, capsys):
    ids = asyncio.run(seed(db, ["snow: create failed: HTTP 400"]))
    assert run("dead-letters", "show", ids[0], "--json", "--store", f"sqlite:///{db}") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["targets"] == ["snow"] and doc["replay"] == f"relay dead-letters replay {ids[0]}"
    expected = json.loads(body_for(0))["data"]["essentials"]
    assert doc["alert"]["rule"] == expected["alertRule"] and doc["alert"]["severity"] == expected["severity"]


def test_show_an_unknown_id_fails_and_names_it(db, capsys):
    asyncio.run(seed(db, ["a"]))
    assert run("dead-letters", "show", "999", "--store", f"sqlite:///{db}") == 1
    assert "no dead letter with id '999'" in capsys.readouterr().err


@pytest.mark.parametrize("error,targets", [
    ("snow: create failed: HTTP 403", ["snow"]),
    ("gave up after 8 attempts: rt-prod: note failed: HTTP 503", ["rt-prod"]),
    ("not delivered within max_age_seconds (86400s) after 3 attempts: snow: search failed: timeout; "
     "jira_sm: create failed: HTTP 500", ["snow", "jira_sm"]),
    ("snow: create failed; snow: resolve failed", ["snow"]),
    ("the stored body is not a common-schema alert: data: missing", []),
    ("leased 10 times without an outcome", []),
])
def test_failed_targets_reads_the_worker_error_forms(error, targets):
    letter = DeadLetter(id="1", event=Event.from_alert(parse_alert_json(body_for(0)), body_for(0)), attempts=1,
                        error=error, dead_at=0.0)
    assert failed_targets(letter) == targets


@pytest.mark.parametrize("action", [["list"], ["show", "1"]])
def test_control_characters_in_an_error_never_reach_the_terminal(db, capsys, action):
    asyncio.run(seed(db, ["snow: create failed: HTTP 400 \x1b[2J\x1b]0;owned\x07 bad\r\nforged line"]))
    assert run("dead-letters", *action, "--store", f"sqlite:///{db}") == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out, repr(out)
    assert "\\x1b[2J" in out, out
    assert not any(line.startswith("forged line") for line in out.splitlines())


@given(names=st.lists(st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True), min_size=1, max_size=4, unique=True),
       detail=st.text(alphabet=st.characters(blacklist_characters=";:", blacklist_categories=("Cs",)), max_size=60),
       prefix=st.sampled_from(["", "gave up after 3 attempts: ",
                               "not delivered within max_age_seconds (60s) after 2 attempts: "]))
def test_failed_targets_names_every_failed_target_of_any_worker_error(names, detail, prefix):
    error = prefix + "; ".join(f"{name}: create failed: HTTP 400 {detail}" for name in names)
    body = body_for(0)
    letter = DeadLetter(id="1", event=Event.from_alert(parse_alert_json(body), body), attempts=1, error=error,
                        dead_at=0.0)
    assert failed_targets(letter) == names
