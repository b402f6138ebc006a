"""Development stand-ins, local only and never in the product wheel: the embedded Postgres, demo data, the
Salesforce stand-in and the `make dev` launcher. Their libraries come with the `dev` extra."""
