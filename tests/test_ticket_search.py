"""Choosing the ticket from one find search (relay.targets.ticket_search): tables and a model."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.targets import Ticket
from relay.targets.ticket_search import FIND_LIMIT, Found, pick_ticket


def t(n: int, resolved: bool = False) -> Ticket:
    return Ticket(id=str(n), number=f"INC{n}", resolved=resolved)


O1, O2, O3 = t(1), t(2), t(3)
R4, R5 = t(4, resolved=True), t(5, resolved=True)


@pytest.mark.parametrize(
    ("rows", "open_rows", "expected"),
    [
        ([], None, Found(ticket=None)),
        ([O1], None, Found(ticket=O1)),
        ([R4], None, Found(ticket=R4)),
        ([O1, O2], None, Found(duplicates=(O1, O2))),
        # A full page with fewer than two open tickets: an older open one may sit behind it.
        ([O1, R4], None, Found(unsettled=True)),
        ([R4, O1], None, Found(unsettled=True)),
        ([R4, R5], None, Found(unsettled=True)),
        # ... which the open-only search settles.
        ([R4, R5], [], Found(ticket=R4)),
        ([R4, R5], [O3], Found(ticket=O3)),
        ([R4, O1], [O1], Found(ticket=O1)),
        ([O1, R4], [O1, O3], Found(duplicates=(O1, O3))),
        ([R4, R5], [O2, O3], Found(duplicates=(O2, O3))),
    ],
)
def test_pick_ticket_table(rows, open_rows, expected):
    assert pick_ticket(rows, open_rows=open_rows) == expected


def test_the_newest_resolved_ticket_is_the_one_returned():
    assert pick_ticket([R5, R4], open_rows=[]).ticket == R5


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: pick_ticket([O1], limit=1), "at least 2 rows"),
        (lambda: pick_ticket([O1, O2, O3]), "3 rows for a limit of 2"),
        (lambda: pick_ticket([R4, R5], open_rows=[R4]), "open-only search answered a resolved ticket"),
    ],
)
def test_bad_input_is_refused_naming_what_was_wrong(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# -- against a model: every ticket of one key, and what a vendor's two searches would answer ----------

tickets = st.lists(st.booleans(), max_size=6).map(
    lambda flags: [Ticket(id=str(i), resolved=r) for i, r in enumerate(flags)]
)  # newest first


@given(tickets)
def test_one_or_two_searches_give_the_answer_of_seeing_every_ticket(all_tickets):
    opened = [x for x in all_tickets if not x.resolved]
    page = all_tickets[:FIND_LIMIT]  # the open-or-resolved search, newest first
    found = pick_ticket(page)
    if found.unsettled:
        found = pick_ticket(page, open_rows=opened[:FIND_LIMIT])
    if len(opened) > 1:
        assert found.duplicates and all(not x.resolved for x in found.duplicates), found
        assert found.ticket is None
    elif opened:
        assert found == Found(ticket=opened[0])
    else:
        assert found == Found(ticket=all_tickets[0] if all_tickets else None)


@given(tickets)
def test_a_key_with_at_most_one_ticket_costs_one_search(all_tickets):
    page = all_tickets[:1]
    assert not pick_ticket(page).unsettled
