"""Batching policy for BentoML's adaptive batcher: dispatch when the model is free, but let the
callers of the batch that just finished rejoin the next one.

BentoML 1.4's CorkDispatcher holds queued requests back while it expects more to arrive,
judging by how long earlier first-in-batch requests waited. In a closed loop that average
feeds on itself (waiting raises the average, which raises the next wait). On 2 CPU cores we
measured a lone client's latency climbing from 0.4 s to 2.1 s over 70 requests, and 8 clients
falling to 1 caption/s, with the model idle most of the time.

Dispatching whatever is queued the moment the model is free fixes that, but splits a closed
loop: 32 clients settle into two alternating batches of ~16 (while one half runs, the other
half's next requests queue up and go out alone), and a batch of 16 costs almost as long as
one of 32. Measured at 32 clients: mean batch 15.4, 24 captions/s against 48 for raw batches
of 32.

So: ``GatherPolicy`` remembers how many requests were in the system when recent batches
finished (the batch plus what was queued then: the concurrency the service is seeing). When
the model is free and fewer than that are queued, it waits for the rest, but only briefly
(30% of the last model call, at most ``MAX_GATHER_S``) and only right after a batch
finished, which is when a closed loop's callers are on their way back. A lone client never
waits (its concurrency is 1), a steady stream that fills batches never waits either, and when
the load drops, one window runs out and the estimate starts afresh. The
rest of BentoML's batcher (queueing, max_batch_size, max_latency refusals, its start-up
calibration) is unchanged.
"""

from __future__ import annotations

import collections
import math
import time

GATHER_FRACTION = 0.3  # of the last model call's duration
MAX_GATHER_S = 0.25
RECENT_BATCHES = 8  # how far back the concurrency estimate looks


class GatherPolicy:
    """When the model is free, hold the queue or dispatch it? Pure state, testable alone."""

    def __init__(self, max_batch_size: int, clock=time.monotonic) -> None:
        self.max_batch_size = max_batch_size
        self._clock = clock
        self._recent = collections.deque(maxlen=RECENT_BATCHES)
        self._window_ends = 0.0

    def batch_done(self, batch_size: int, queued: int, duration_s: float) -> None:
        self._recent.append(batch_size + queued)
        self._window_ends = self._clock() + min(GATHER_FRACTION * duration_s, MAX_GATHER_S)

    def concurrency(self) -> int:
        return max(self._recent, default=1)

    def hold(self, queued: int) -> bool:
        if queued >= min(self.concurrency(), self.max_batch_size):
            return False
        if self._clock() < self._window_ends:
            return True
        # The callers did not all come back in time: the load dropped. Forget the old estimate
        # so that the next batches do not wait for them too (the next batch_done re-learns it).
        self._recent.clear()
        return False


_installed = False


def install_gather_dispatch() -> None:
    """Put GatherPolicy into every CorkDispatcher BentoML creates from now on."""
    global _installed
    if _installed:
        return
    from bentoml._internal.marshal import dispatcher

    class GatherOptimizer(dispatcher.Optimizer):
        """CorkDispatcher keeps waiting while ``n * (...) <= optimizer.wait``: so ``wait`` is
        +inf to hold the queue and 0 to dispatch it now."""

        cork = None  # the CorkDispatcher that owns this optimizer, set right after it is created
        policy: GatherPolicy | None = None

        @property
        def wait(self) -> float:
            if self.policy is None or self.cork is None:
                return 0.0
            return math.inf if self.policy.hold(len(self.cork._queue)) else 0.0

        @wait.setter
        def wait(self, value: float) -> None:
            pass  # BentoML's own estimate (the average past wait) is what we replace

        def log_outbound(self, n: int, wait: float, duration: float) -> None:
            super().log_outbound(n, wait, duration)  # keeps the latency model for max_latency refusals
            if self.policy is not None and self.cork is not None:
                self.policy.batch_done(n, len(self.cork._queue), duration)

    original_init = dispatcher.CorkDispatcher.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        if isinstance(self.optimizer, GatherOptimizer):
            self.optimizer.cork = self
            self.optimizer.policy = GatherPolicy(self.max_batch_size)

    # CorkDispatcher looks Optimizer up in its module when it is created, after this runs.
    dispatcher.Optimizer = GatherOptimizer
    dispatcher.CorkDispatcher.__init__ = init
    _installed = True
