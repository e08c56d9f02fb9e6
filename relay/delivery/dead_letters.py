"""Dead letters for people: `relay dead-letters list` shows what could not be delivered, to which target
and why, `show ID` everything about one, `replay ID... | --all` puts events back in the queue (their
alert's order kept).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import TextIO

from relay.alerts import SchemaError, parse_alert_json
from relay.logs import escape_controls
from relay.store.base import DeadLetter, Store

ERROR_WIDTH = 100
# The worker's failure texts start with the target's name ("snow: create failed: HTTP 403 ..."), one per
# failed target joined by "; ", after "... N attempts: " when it gave up. A name is a schema TARGET_NAME.
_FAILED_TARGET = re.compile(r"(?:^|; |attempts: )([A-Za-z0-9_-]{1,64}): ")


def failed_targets(letter: DeadLetter) -> list[str]:
    """The targets the error names, in order, each once; [] when it names none (an unparseable body)."""
    return list(dict.fromkeys(_FAILED_TARGET.findall(letter.error)))


def as_json(letter: DeadLetter) -> dict[str, object]:
    return {
        "id": letter.id,
        "dead_at": _iso(letter.dead_at),
        "attempts": letter.attempts,
        "alert_id": letter.event.alert_id,
        "condition": letter.event.condition,
        "occurred_at": letter.event.occurred_at,
        "key": letter.event.key,
        "targets": failed_targets(letter),
        "error": letter.error,
    }


def table(letters: list[DeadLetter]) -> str:
    """One line per dead letter: id, when, attempts, condition, target, alert GUID, the first part of the
    error."""
    if not letters:
        return "no dead letters"
    rows = [("ID", "DEAD AT (UTC)", "ATTEMPTS", "CONDITION", "TARGET", "ALERT", "ERROR")]
    for d in letters:
        guid = d.event.alert_id.rstrip("/").rsplit("/", 1)[-1]
        error = escape_controls(" ".join(d.error.split()))  # a terminal shows it: no ESC sequence gets through
        if len(error) > ERROR_WIDTH:
            error = error[: ERROR_WIDTH - 1] + "…"
        target = ",".join(failed_targets(d)) or "-"
        rows.append((d.id, _iso(d.dead_at), str(d.attempts), d.event.condition, target, guid, error))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
                     for r in rows)


async def list_command(store: Store, out: TextIO, json_lines: bool = False) -> int:
    letters = await store.dead_letters()
    if json_lines:
        for d in letters:
            out.write(json.dumps(as_json(d)) + "\n")
    else:
        out.write(table(letters) + "\n")
    return 0


def describe(letter: DeadLetter) -> dict[str, object]:
    """`as_json` and what the stored body says of the alert (rule, severity, service), when it parses."""
    doc = as_json(letter)
    try:
        alert = parse_alert_json(letter.event.body)
    except (ValueError, SchemaError) as exc:
        doc["alert"] = f"the stored body is not a common-schema alert: {exc}"
    else:
        ess = alert.essentials
        doc["alert"] = {"rule": ess.alert_rule, "severity": ess.severity, "signal_type": ess.signal_type,
                        "monitoring_service": ess.monitoring_service, "fired_at": ess.fired_at}
    doc["replay"] = f"relay dead-letters replay {letter.id}"
    return doc


async def show_command(store: Store, letter_id: str, out: TextIO, err: TextIO, as_json: bool = False) -> int:
    """Everything about one dead letter, with the command that replays it; 1 for an unknown id."""
    letter = next((d for d in await store.dead_letters() if d.id == letter_id), None)
    if letter is None:
        err.write(f"relay: no dead letter with id {letter_id!r} (see `relay dead-letters list`)\n")
        return 1
    doc = describe(letter)
    if as_json:
        out.write(json.dumps(doc) + "\n")
        return 0
    labels = {"id": "dead letter", "dead_at": "dead at (UTC)", "occurred_at": "occurred at", "key": "event key",
              "alert_id": "alert id", "replay": "replay with"}
    width = max(len(labels.get(k, k)) for k in doc)
    for name, value in doc.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items() if v)
        elif isinstance(value, list):
            value = ", ".join(value) or "-"
        out.write(f"{labels.get(name, name).ljust(width)}  {escape_controls(str(value))}\n")
    return 0


async def replay_command(store: Store, ids: list[str] | None, out: TextIO, err: TextIO) -> int:
    """Replay the named dead letters (all when `ids` is None); unknown ids replay nothing and fail."""
    try:
        count = await store.replay(ids)
    except KeyError as exc:
        err.write(f"relay: {exc.args[0] if exc.args else exc}; nothing was replayed "
                  "(see `relay dead-letters list`)\n")
        return 1
    out.write(f"replayed {count} dead letter{'s' if count != 1 else ''}; the relay delivers them in order\n")
    return 0


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
