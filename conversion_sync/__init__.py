"""conversion_sync: keeps a marketing contact store in step with warehouses and Salesforce."""

__version__ = "0.1.0"
