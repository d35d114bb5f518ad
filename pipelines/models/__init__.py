"""Checkpoint files -> loaded modules: discovery, architecture from tensor shapes, layouts, loading, the manager."""
