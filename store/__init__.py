"""SQLite storage for simmerge: the only package that speaks SQL. Imports nothing of ours."""
from store.errors import StoreError
from store.store import Store

__all__ = ["Store", "StoreError"]
