"""A bounded in-memory cache of computed chips, one per replica.

Key: ``(scene_id, row_off, col_off, model_key)``: a chip window of a scene on the same chip grid as
``map_region`` (so neighbouring and repeated tiles share chips), and ``model_key``, a hash of the
model's weights fingerprint (:func:`~magseg_ray.model.checkpoint.model_fingerprint`), its prompt card,
the chip size and the answer token budget: a retrained model or other settings never see stale
chips. Value: the chip's classes (uint8, 255 = no data) and patch confidence grid.

Bounded by bytes (``max_bytes``): the least recently used chips leave first. A 512 px chip is
about 0.25 MiB, so the default 256 MiB holds about a thousand chips.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

ChipKey = tuple[str, int, int, str]


class ChipCache:
    """Thread-safe LRU of ``ChipKey -> (classes, confidence)``, bounded by total array bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[ChipKey, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    @staticmethod
    def _size(value: tuple[np.ndarray, np.ndarray]) -> int:
        return sum(a.nbytes for a in value)

    def get(self, key: ChipKey) -> tuple[np.ndarray, np.ndarray] | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: ChipKey, value: tuple[np.ndarray, np.ndarray]) -> None:
        size = self._size(value)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= self._size(old)
            self._items[key] = value
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= self._size(dropped)
                self.evictions += 1

    def stats(self) -> dict:
        with self._lock:
            return {"chips": len(self._items), "bytes": self._bytes, "max_bytes": self.max_bytes,
                    "hits": self.hits, "misses": self.misses, "evictions": self.evictions}
