"""secure-export relay: receives Azure Monitor Secure Webhook alerts and drives ITSM incidents."""
