"""Inventory: servers, clusters, selectors, the credential vault and pinned host keys."""
