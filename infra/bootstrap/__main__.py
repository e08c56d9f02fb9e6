"""secure-export's bootstrap stack: the Entra application Azure Monitor requests tokens for, its app
role granted to Azure Monitor's service principal, and its explicit owners. Its outputs are the
values of the main stack's `secure-export:entra`."""

import sys
from pathlib import Path

# Run as a script from infra/bootstrap; import the program's modules as the `infra` package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pulumi

from infra.config.bootstrap import load_bootstrap
from infra.identity import SecureWebhookIdentity, SecureWebhookIdentityArgs

cfg = load_bootstrap()  # validated before any resource is declared

identity = SecureWebhookIdentity(
    "secure-webhook",
    SecureWebhookIdentityArgs(
        display_name=cfg.display_name,
        identifier_uri=cfg.identifier_uri,
        owners=cfg.owners,
        create_azure_monitor_service_principal=cfg.create_azure_monitor_service_principal,
    ),
)

# Named as the keys of the main stack's secure-export:entra.
pulumi.export("clientId", identity.client_id)
pulumi.export("objectId", identity.application_object_id)
pulumi.export("identifierUri", identity.identifier_uri)
