"""Which ticket one search for a correlation key found: the find every target does before a create.

A target asks once for the key's open and resolved tickets together, newest first, `FIND_LIMIT` rows
(one call instead of an open search and a resolved one). The rows settle the answer unless the page
came back full with fewer than two open tickets among them: then an older open ticket could hide
behind the page, and the target asks once more for open tickets only. Keys are per episode, so a key
normally has one ticket and that second search is rare (duplicates left by a bug or a restore).
Pure: the target turns rows into `Ticket`s (resolved or not) and words the duplicate error itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from relay.targets import Ticket

# Rows asked for: two, so that two tickets with one key show up as such (peers that asked for one
# could not tell).
FIND_LIMIT = 2


@dataclass(frozen=True, slots=True)
class Found:
    """What the rows say: the ticket (or None), open duplicates, or that the open-only search must decide."""

    ticket: Ticket | None = None
    duplicates: tuple[Ticket, ...] = ()  # two or more open tickets carry the key: a person must settle it
    unsettled: bool = False  # ask again for open tickets only, then call `pick_ticket` with `open_rows`


def pick_ticket(
    rows: Sequence[Ticket], *, limit: int = FIND_LIMIT, open_rows: Sequence[Ticket] | None = None
) -> Found:
    """The key's open ticket; else its newest resolved one; else None.

    `rows`: the answer to the open-or-resolved search, newest first, at most `limit` rows.
    `open_rows`: the answer to the open-only search (asked for when a first answer was unsettled).
    """
    if limit < 2:
        raise ValueError(f"a find asks for at least 2 rows, to see duplicates (got limit={limit})")
    if len(rows) > limit:
        raise ValueError(f"the search answered {len(rows)} rows for a limit of {limit}")
    opened = [t for t in rows if not t.resolved]
    if open_rows is not None:
        if any(t.resolved for t in open_rows):
            raise ValueError("the open-only search answered a resolved ticket")
        opened = _unique([*opened, *open_rows])
    if len(opened) > 1:
        return Found(duplicates=tuple(opened))
    if opened:
        if len(rows) < limit or open_rows is not None:
            return Found(ticket=opened[0])
        return Found(unsettled=True)  # a second open ticket may sit behind a full page
    if len(rows) == limit and open_rows is None:
        return Found(unsettled=True)  # only resolved ones on a full page: an older open one may hide
    resolved = [t for t in rows if t.resolved]
    return Found(ticket=resolved[0] if resolved else None)


def _unique(tickets: Sequence[Ticket]) -> list[Ticket]:
    seen: set[str] = set()
    out = []
    for t in tickets:
        if t.id not in seen:
            seen.add(t.id)
            out.append(t)
    return out
