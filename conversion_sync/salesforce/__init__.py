"""Salesforce: the client resource, API budget, polling of Accounts, Leads and Contacts, and its Dagster assets."""
