"""Reconciliation with the Azure Alerts Management API (docs/reconciliation.md): events whose webhook
never reached the relay are read back from Azure and stored through the same keys and lifecycle; and
two-way sync, which moves an alert when a person resolves (or takes) its ticket."""

from relay.reconcile.job import JOB_NAME, Reconciler, azure_client_factory
from relay.reconcile.plan import ListedAlert, skip_reason, synthesized
from relay.reconcile.sync import TicketSync
from relay.reconcile.sync_decision import decide_sync

__all__ = ["JOB_NAME", "ListedAlert", "Reconciler", "TicketSync", "azure_client_factory", "decide_sync",
           "skip_reason", "synthesized"]
