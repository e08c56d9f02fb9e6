"""The page a person opens for a ticket, as the delivery log line and `make demo` show it: each target's
module names its own (RT, ServiceNow, Jira); a target without pages gives none."""

from __future__ import annotations

import pytest

from relay.targets import Ticket, build_target, ticket_link

ENV = {"SECRET": "x"}


@pytest.mark.parametrize("cfg,ticket,link", [
    ({"kind": "request_tracker", "base_url": "https://rt.example/", "auth": {"type": "token", "token_env": "SECRET"},
      "queue": "Azure Alerts"},
     Ticket("42", "42"), "https://rt.example/Ticket/Display.html?id=42"),
    ({"kind": "request_tracker", "base_url": "https://rt.example/rt/REST/2.0/",
      "auth": {"type": "token", "token_env": "SECRET"}, "queue": "Q"},
     Ticket("7"), "https://rt.example/rt/Ticket/Display.html?id=7"),
    ({"kind": "servicenow", "base_url": "https://acme.service-now.com",
      "auth": {"type": "basic", "username": "u", "password_env": "SECRET"}},
     Ticket("0123abcd", "INC0010001"), "https://acme.service-now.com/nav_to.do?uri=incident.do%3Fsys_id%3D0123abcd"),
    ({"kind": "jira_service_management", "base_url": "https://acme.atlassian.net",
      "deployment": "cloud", "auth": {"type": "api_token", "email": "a@b.c", "token_env": "SECRET"},
      "project_key": "OPS"},
     Ticket("10001", "OPS-12"), "https://acme.atlassian.net/browse/OPS-12"),
    ({"kind": "dry_run", "path": "/tmp/never-written.jsonl"}, Ticket("DRY1", "DRY1"), None),
])
def test_ticket_link(cfg, ticket, link):
    assert ticket_link(build_target("t", cfg, ENV), ticket) == link
