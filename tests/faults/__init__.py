"""The fault suite: what the relay survives (crashes, target outages, token attacks, fuzzed payloads,
hostile clients), each test printing its counts, summed up at the end of the pytest run."""
