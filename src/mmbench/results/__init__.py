"""Results: the versioned JSON schema, atomic storage with resume, the leaderboard tables, and `load(path)`: every
result as a pandas DataFrame (pandas is imported only when `load` is called)."""

from mmbench.results.frame import load

__all__ = ["load"]
