"""The run store (SQLite) and the files a run writes."""

from .runs import RunStore

__all__ = ["RunStore"]
