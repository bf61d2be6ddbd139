"""Shared kernel: settings, database and tenancy, event bus, security primitives, errors."""
