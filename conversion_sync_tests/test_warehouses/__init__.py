"""Tests for conversion_sync.warehouses: every adapter against a real engine."""
