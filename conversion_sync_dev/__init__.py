"""Development stand-ins: embedded Postgres, demo data, local Salesforce."""
