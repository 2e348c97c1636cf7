"""A small thread-safe cache bounded by entry count and by age. Pure code (no I/O).

The scaler keeps what it derives from trigger metadata (parsed configs, built queries) so that KEDA's
identical polls cost nothing; metadata is input from every ScaledObject author, so what is kept must be
bounded whatever they send: at most ``max_entries`` entries, none older than ``max_age_s``, least
recently used evicted first.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """``get_or_compute(key, compute)``: the kept value, or ``compute()`` kept (exceptions are not kept)."""

    def __init__(
        self, max_entries: int, max_age_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_entries < 1 or max_age_s <= 0:
            raise ValueError("need max_entries >= 1 and max_age_s > 0")
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get_or_compute(self, key: K, compute: Callable[[], V]) -> V:
        now = self._clock()
        with self._lock:
            kept = self._entries.get(key)
            if kept is not None and now - kept[0] <= self.max_age_s:
                self._entries.move_to_end(key)
                return kept[1]
        value = compute()  # outside the lock: may be slow, and two threads computing one key is harmless
        with self._lock:
            self._entries[key] = (now, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            # Age: the oldest-stored entries sit at the front unless recently used; drop expired ones there.
            while self._entries:
                first_key, (stored, _) = next(iter(self._entries.items()))
                if now - stored <= self.max_age_s:
                    break
                del self._entries[first_key]
        return value
