"""State stores: the embedded SQLite store and the etcd cluster store share one
small interface, shaped after etcd v3 (revisions, compare-and-swap
transactions, prefix listing, watches)."""

from pontoon.store.base import (
    Compacted,
    Compare,
    Delete,
    Event,
    KeyValue,
    Put,
    Store,
)

__all__ = ["Compacted", "Compare", "Delete", "Event", "KeyValue", "Put", "Store"]
