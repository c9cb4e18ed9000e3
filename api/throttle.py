"""Sign-in throttling: failed passwords for one account from one client are counted, and once
there are too many within a window, that client's sign-ins to that account are refused (429,
``Retry-After``) until the oldest failure leaves the window.

Keyed by account *and* client, so that someone guessing one account's password from one place
cannot lock its owner out from another. Counts are per API process and kept in memory: a
restart forgets them, and N processes allow N times the failures (bcrypt's cost still bounds
the rate of guesses per process).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

# (account, client) pairs remembered at most; past that the least recently failed are forgotten, so
# that a spray of usernames cannot grow memory without bound.
MAX_KEYS = 10_000

Key = tuple[str, str]  # (username, case-folded; client address)


class LoginThrottle:
    """At most ``max_failures`` failed sign-ins per key within ``window_seconds``."""

    def __init__(
        self,
        *,
        max_failures: int,
        window_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = max_failures
        self._window = window_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: OrderedDict[Key, deque[float]] = OrderedDict()

    @staticmethod
    def key(username: str, client: str | None) -> Key:
        return username.casefold(), client or ""

    def retry_after(self, key: Key) -> float | None:
        """Seconds until ``key`` may try again; ``None`` when it may now."""
        with self._lock:
            failures = self._recent(key)
            if failures is None or len(failures) < self._max:
                return None
            return failures[0] + self._window - self._clock()

    def failed(self, key: Key) -> None:
        with self._lock:
            failures = self._recent(key)
            if failures is None:
                failures = self._failures[key] = deque()
            failures.append(self._clock())
            self._failures.move_to_end(key)
            while len(self._failures) > MAX_KEYS:
                self._failures.popitem(last=False)

    def succeeded(self, key: Key) -> None:
        with self._lock:
            self._failures.pop(key, None)

    def _recent(self, key: Key) -> deque[float] | None:
        """The failures of ``key`` still inside the window (older ones dropped)."""
        failures = self._failures.get(key)
        if failures is None:
            return None
        horizon = self._clock() - self._window
        while failures and failures[0] <= horizon:
            failures.popleft()
        if not failures:
            del self._failures[key]
            return None
        return failures
