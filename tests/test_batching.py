"""The batching policy: alone with a fake clock, and inside BentoML's real CorkDispatcher
driven by a closed loop of clients (no model, no server)."""

from __future__ import annotations

import asyncio
import statistics

from snap2caption_service.serving.batching import MAX_GATHER_S, GatherPolicy, install_gather_dispatch


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_lone_client_never_waits():
    clock = Clock()
    policy = GatherPolicy(32, clock)
    for _ in range(5):
        policy.batch_done(1, 0, 0.2)
        clock.now += 0.01
        assert not policy.hold(1)


def test_holds_for_the_callers_of_the_last_batch_then_gives_up():
    clock = Clock()
    policy = GatherPolicy(32, clock)
    policy.batch_done(16, 16, 0.6)  # 16 ran while 16 more queued: 32 callers in the system
    assert policy.concurrency() == 32
    clock.now += 0.01
    assert policy.hold(16)  # the first 16 callers are on their way back
    assert not policy.hold(32)  # everyone is back: go
    clock.now += min(0.3 * 0.6, MAX_GATHER_S)
    assert not policy.hold(16)  # the window is over: never wait longer than that


def test_never_waits_for_more_than_fits_a_batch():
    clock = Clock()
    policy = GatherPolicy(32, clock)
    policy.batch_done(32, 32, 1.0)  # 64 in the system, batches hold 32
    assert not policy.hold(32)
    assert policy.hold(31)


def test_forgets_callers_who_left():
    clock = Clock()
    policy = GatherPolicy(32, clock)
    policy.batch_done(32, 0, 0.5)
    for _ in range(8):
        policy.batch_done(4, 0, 0.1)
    assert policy.concurrency() == 4


def test_one_missed_window_resets_the_estimate():
    """32 callers, then one: the lone caller waits out one window, not one per remembered batch."""
    clock = Clock()
    policy = GatherPolicy(32, clock)
    policy.batch_done(32, 0, 0.5)
    clock.now += 0.01
    assert policy.hold(1)
    clock.now += 0.5
    assert not policy.hold(1)  # window over: dispatch, and forget the 32
    policy.batch_done(1, 0, 0.2)
    clock.now += 0.001
    assert not policy.hold(1)


async def closed_loop(clients: int, batches: int, model_s: float = 0.03, return_s: float = 0.004):
    """``clients`` callers that each send a request, wait for the answer, pause ``return_s``
    times their index / clients (answers do not all get back at once), and send the next,
    through a real CorkDispatcher around a fake model taking ``model_s`` per call."""
    from bentoml._internal.marshal.dispatcher import CorkDispatcher

    sizes: list[int] = []

    async def model(items):
        sizes.append(len(items))
        await asyncio.sleep(model_s)
        return list(items)

    dispatcher = CorkDispatcher(60_000, 64, fallback=lambda: None, get_batch_size=lambda _: 1)
    call = dispatcher(model)
    stop = asyncio.Event()

    async def client(i: int):
        while not stop.is_set():
            assert await call(i) == i
            await asyncio.sleep(return_s * i / clients)
            if len(sizes) >= batches:
                stop.set()

    await asyncio.gather(*(client(i) for i in range(clients)))
    dispatcher.shutdown()
    return sizes


def test_a_closed_loop_through_bentomls_dispatcher_forms_full_batches():
    """Without the policy, dispatching whatever is queued the moment the model is free splits
    32 closed-loop callers into alternating part-batches; with it they ride together."""
    install_gather_dispatch()
    sizes = asyncio.run(closed_loop(32, 60))
    steady = sizes[-20:]  # after BentoML's own start-up calibration batches
    assert statistics.fmean(steady) >= 30, steady


def test_a_lone_client_through_bentomls_dispatcher_is_not_delayed():
    install_gather_dispatch()

    async def timed():
        from bentoml._internal.marshal.dispatcher import CorkDispatcher

        async def model(items):
            await asyncio.sleep(0.02)
            return list(items)

        call = CorkDispatcher(60_000, 64, fallback=lambda: None, get_batch_size=lambda _: 1)(model)
        loop = asyncio.get_running_loop()
        latencies = []
        for i in range(40):
            t0 = loop.time()
            await call(i)
            latencies.append(loop.time() - t0)
        return latencies

    latencies = asyncio.run(timed())
    # 20 ms of model time; a 1 ms dispatcher tick is all that may come on top.
    assert statistics.median(latencies[-20:]) < 0.020 + 0.008, latencies
