"""Intake: POST /alerts. Check the Entra token, parse the common-schema body, commit it to the store.

`handler` is the endpoint and its status contract, `tokens` the token checks, `signing_keys` the
tenant's JWKS, `metrics` what intake counts. The app (`relay.app`) wires these into aiohttp; intake
knows nothing of delivery: it calls the `ON_ACCEPT_KEY` callbacks after each new commit.
"""

from relay.intake.handler import (
    IN_FLIGHT_KEY,
    MAX_BODY_BYTES,
    METRICS_KEY,
    ON_ACCEPT_KEY,
    SOURCE_POLICY_KEY,
    STORE_KEY,
    TRACING_KEY,
    VALIDATOR_KEY,
    InFlight,
    expect_continue,
    post_alert,
)
from relay.intake.sources import SourcePolicy

__all__ = ["IN_FLIGHT_KEY", "MAX_BODY_BYTES", "METRICS_KEY", "ON_ACCEPT_KEY", "SOURCE_POLICY_KEY", "STORE_KEY",
           "TRACING_KEY", "VALIDATOR_KEY", "InFlight", "SourcePolicy", "expect_continue", "post_alert"]
