"""The accuracy loop's stream threads (common.harness.runs._in_streams): order, where decoding runs, and failures."""
import random
import threading
import time

import pytest

from common.errors import InputError, RuntimeFailure
from common.harness.runs import _in_streams


def _batches(n, fail_at=None, loaded_in=None):
    for i in range(n):
        if loaded_in is not None:
            loaded_in.add(threading.current_thread().name)
        if i == fail_at:
            raise InputError("cannot decode image", f"img{i}.jpg")
        yield i


def _slow_square(runner, batch):
    time.sleep(random.uniform(0, 0.004))  # streams finish out of order
    if batch == runner.get("fail_at"):
        raise RuntimeFailure(f"inference failed on batch {batch}")
    return batch * batch


def _no_stream_threads_left(before):
    return threading.active_count() == before


def test_results_come_back_in_order_and_loading_runs_in_the_streams():
    random.seed(0)
    loaded_in = set()
    before = threading.active_count()
    out = list(_in_streams(_batches(60, loaded_in=loaded_in), [{}, {}, {}], _slow_square))
    assert out == [(i, i * i) for i in range(60)]
    assert threading.current_thread().name not in loaded_in and len(loaded_in) >= 2
    assert _no_stream_threads_left(before)


@pytest.mark.parametrize("where", ["decode", "infer"])
def test_a_failure_comes_after_every_batch_before_it(where):
    random.seed(1)
    before = threading.active_count()
    got = []
    runner = {"fail_at": 17} if where == "infer" else {}
    batches = _batches(40, fail_at=17 if where == "decode" else None)
    with pytest.raises(InputError if where == "decode" else RuntimeFailure, match="img17|batch 17"):
        for batch, result in _in_streams(batches, [runner, runner], _slow_square):
            got.append(batch)
    assert got == list(range(17))
    assert _no_stream_threads_left(before)


def test_the_consumer_stopping_early_stops_the_streams():
    before = threading.active_count()
    started = []

    def infer(runner, batch):
        started.append(batch)
        return batch

    with pytest.raises(KeyboardInterrupt):
        for batch, _ in _in_streams(iter(range(10_000)), [{}, {}], infer, ahead=4):
            if batch == 5:
                raise KeyboardInterrupt
    assert _no_stream_threads_left(before)
    # batches 0-4 were released by the consumer, 5 was being consumed: at most 4 more can have been taken,
    # however the threads were scheduled (a bound, not a race)
    assert len(started) <= 5 + 4


def test_streams_never_run_more_than_ahead_batches_past_the_consumer():
    pulled = [0]

    def batches():
        for i in range(300):
            pulled[0] += 1
            yield i

    worst = 0
    for k, (batch, result) in enumerate(_in_streams(batches(), [{}, {}, {}], lambda r, b: b, ahead=3)):
        assert batch == result == k
        worst = max(worst, pulled[0] - k)  # taken so far minus the batches the consumer has finished with
        if k % 50 == 0:
            time.sleep(0.01)  # a slow consumer: without the bound the streams race through every batch
    assert worst <= 3, f"the streams ran {worst} batches ahead of the consumer"
