"""Moved to :mod:`gritkit.results` (training and eval both write results); kept so old imports work."""

from gritkit.results import Record, Score, load_records, save_records

__all__ = ["Record", "Score", "load_records", "save_records"]
