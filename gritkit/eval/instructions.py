"""Per-task embedding instructions: they live in :mod:`gritkit.prompts` with every other prompt text."""

from gritkit.prompts import INSTRUCTIONS, TYPE_INSTRUCTIONS, instruction_for

__all__ = ["INSTRUCTIONS", "TYPE_INSTRUCTIONS", "instruction_for"]
