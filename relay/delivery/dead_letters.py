"""Dead letters for people: `relay dead-letters list` shows what could not be delivered and why,
`relay dead-letters replay ID... | --all` puts events back in the queue (their alert's order kept).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TextIO

from relay.store.base import DeadLetter, Store

ERROR_WIDTH = 100


def as_json(letter: DeadLetter) -> dict[str, object]:
    return {
        "id": letter.id,
        "dead_at": _iso(letter.dead_at),
        "attempts": letter.attempts,
        "alert_id": letter.event.alert_id,
        "condition": letter.event.condition,
        "occurred_at": letter.event.occurred_at,
        "key": letter.event.key,
        "error": letter.error,
    }


def table(letters: list[DeadLetter]) -> str:
    """One line per dead letter: id, when, attempts, condition, alert GUID, the first part of the error."""
    if not letters:
        return "no dead letters"
    rows = [("ID", "DEAD AT (UTC)", "ATTEMPTS", "CONDITION", "ALERT", "ERROR")]
    for d in letters:
        guid = d.event.alert_id.rstrip("/").rsplit("/", 1)[-1]
        error = " ".join(d.error.split())
        if len(error) > ERROR_WIDTH:
            error = error[: ERROR_WIDTH - 1] + "…"
        rows.append((d.id, _iso(d.dead_at), str(d.attempts), d.event.condition, guid, error))
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
