"""Stores: one protocol (:class:`pairline.stores.base.Store`), embedded and Redis backends."""

from pairline.stores.base import DecisionRecord, ProfileRow, Store
from pairline.stores.memory import MemoryStore

__all__ = ["DecisionRecord", "MemoryStore", "ProfileRow", "Store"]
