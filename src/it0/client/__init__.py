"""A synchronous client for a running IT0 server (what ``it0 tasks``/``approvals`` use)."""

from it0.client.rest import ApiError, Client, Event, ServerUnreachable, parse_sse

__all__ = ["ApiError", "Client", "Event", "ServerUnreachable", "parse_sse"]
