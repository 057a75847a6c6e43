"""Runtimes other than PyTorch that can run part of a :class:`gritkit.GritLM` (opt-in)."""
