"""A clock that moves only when the test moves it, for code that takes an injected clock."""

from __future__ import annotations


class FakeClock:
    """Monotonic seconds that stand still until ``now`` is changed (or :meth:`advance` is called)."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
