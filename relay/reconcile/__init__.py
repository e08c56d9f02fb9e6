"""Reconciliation with the Azure Alerts Management API (docs/reconciliation.md): events whose webhook
never reached the relay are read back from Azure and stored through the same keys and lifecycle."""

from relay.reconcile.job import JOB_NAME, Reconciler, azure_client_factory
from relay.reconcile.plan import ListedAlert, skip_reason, synthesized

__all__ = ["JOB_NAME", "ListedAlert", "Reconciler", "azure_client_factory", "skip_reason", "synthesized"]
