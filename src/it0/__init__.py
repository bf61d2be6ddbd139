"""IT0: an AI-powered operations platform for server clusters, with people in control."""

__version__ = "0.1.0"
