"""Delivery: from a stored event to the right call on the right ticket, exactly once.

- `routing`: the targets and ordered routes (the model the worker reads) and their matching;
  `config` loads RELAY_CONFIG into it and validates the whole file with line numbers.
- `worker`: claims events from the store (one per alert at a time), decides, calls, records.
- `lifecycle`: the pure decision (event facts, ticket state, route policy) -> action.
- `rendering`: the incident and note texts a target is sent, cut to the target's limits.
- `retry_policy`: backoff with jitter and the per-target circuit breaker.
- `dead_letters`: what `relay dead-letters list|replay` prints.
- `metrics`: what delivery counts.

Callers import the submodule they need (the face imports nothing), so that loading the worker does not
load the YAML validator.
"""
