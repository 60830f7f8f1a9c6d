"""Fleet-side tooling: certificate authority, enrollment, broker configuration, fleet CLI."""
