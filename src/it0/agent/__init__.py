"""The AI ops agent: runbooks, and later conversations, model providers and tools."""
