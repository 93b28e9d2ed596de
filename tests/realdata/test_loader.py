"""The shared-memory loader: the same batches as in-process decoding, held batches never overwritten, failures in
order, a dead worker reported instead of a hang."""
import gc
import os
import signal

import numpy as np
import pytest

from common.data.coco import BatchLoader, image_items, read_annotations
from common.errors import InputError, RuntimeFailure
from common.data.loader import SharedBatchLoader, open_loader
from common.data.preprocess import Preprocessor
from common.config.specs import Preprocess
from synthetic_coco import make_synthetic_coco


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    images, ann = make_synthetic_coco(tmp_path_factory.mktemp("syn"), n_images=23, seed=7)
    return image_items(read_annotations(ann), images)


PRE = Preprocessor(Preprocess(mean=(1, 2, 3), std=(4, 5, 6)), 96, 128)


def _reference(items, bs):
    with BatchLoader(items, PRE, bs, workers=0) as loader:
        return [(b.image_ids.copy(), b.inputs.copy(), b.meta.copy()) for b in loader]


@pytest.mark.parametrize("bs,workers", [(1, 2), (5, 3), (32, 2)])
def test_same_batches_as_in_process(items, bs, workers):
    ref = _reference(items, bs)
    with SharedBatchLoader(items, PRE, bs, workers) as loader:
        got = 0
        for (ids, inputs, meta), b in zip(ref, loader):
            np.testing.assert_array_equal(ids, b.image_ids)
            np.testing.assert_array_equal(inputs, b.inputs)
            np.testing.assert_array_equal(meta, b.meta)
            got += 1
            del b
        assert got == len(ref)
        gc.collect()
        assert sorted(loader.free) == list(range(loader.n_buffers))  # every buffer came back


@pytest.mark.parametrize("bs,workers", [(8, 2), (1, 2), (5, 3)])
def test_each_buffer_row_has_one_owner(items, monkeypatch, bs, workers):
    """Every row of every buffer is decoded by the same worker all run long (its pages stay faulted in that one
    process) and every worker gets work. Planted: the geometry row carries the pid of the process that decoded
    it."""
    import common.data.loader as loader_module
    real = loader_module._load_one

    def tagged(item, out=None, canvas=False):
        x, meta = real(item, out, canvas)
        meta = meta.copy()
        meta[0] = os.getpid()
        return x, meta

    monkeypatch.setattr(loader_module, "_load_one", tagged)
    writers: dict = {}
    with SharedBatchLoader(items + items, PRE, bs, workers) as loader:
        address = {b.__array_interface__["data"][0]: s for s, b in enumerate(loader.inputs)}
        for b in loader:
            slot = address.get(b.inputs.__array_interface__["data"][0])
            assert slot is not None  # nothing held: every batch came from a worker
            for row, pid in enumerate(b.meta[:, 0].astype(int).tolist()):
                writers.setdefault((slot, row), set()).add(pid)
            del b
        pids = [p.pid for p in loader.procs]
        assert all(w == {pids[loader.owner(slot, row)]} for (slot, row), w in writers.items()), writers
    assert set().union(*writers.values()) == set(pids)


def test_held_batches_stay_intact(items):
    """Planted pressure: the consumer keeps every batch (more than there are buffers). A loader that reused a
    buffer still referenced would change an earlier batch; this one decodes in-process instead."""
    ref = _reference(items, 2)
    with SharedBatchLoader(items, PRE, 2, workers=2, buffers=3) as loader:
        held = list(loader)
    assert len(held) == len(ref)
    for (ids, inputs, meta), b in zip(ref, held):
        np.testing.assert_array_equal(ids, b.image_ids)
        np.testing.assert_array_equal(inputs, b.inputs)
        np.testing.assert_array_equal(meta, b.meta)


def test_bad_image_raised_after_the_earlier_batches(items, tmp_path):
    bad = [it for it in items]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really a jpeg")
    bad[9] = type(bad[9])(bad[9].image_id, str(broken), bad[9].width, bad[9].height)
    seen = []
    with SharedBatchLoader(bad, PRE, 4, workers=2) as loader:
        with pytest.raises(InputError, match="broken.jpg"):
            for b in loader:
                seen.extend(b.image_ids.tolist())
    assert seen == [it.image_id for it in items[:8]]  # batches 0 and 1, then the error of batch 2


def test_dead_worker_is_reported_not_waited_for(items):
    with SharedBatchLoader(items, PRE, 4, workers=2) as loader:
        for p in loader.procs:
            os.kill(p.pid, signal.SIGKILL)
        for p in loader.procs:
            p.join(timeout=10)
        with pytest.raises(RuntimeFailure, match="decoding worker died"):
            list(loader)


def test_open_loader_picks_by_workers(items):
    with open_loader(items, PRE, 4, workers=0) as a, open_loader(items, PRE, 4, workers=1) as b:
        assert type(a) is BatchLoader and type(b) is SharedBatchLoader


def test_accuracy_run_with_shared_loader_workers(shared_data, rtmdet_onnx, tmp_path):
    """The whole accuracy path with decoding workers (the shared-memory loader), two streams and the input cache
    gives the same metrics and detections as in-process decoding."""
    from common.harness.runs import RunConfig, run_accuracy
    base = dict(model="rtmdet", onnx=str(rtmdet_onnx), images_dir=str(shared_data / "coco" / "val2017"),
                annotation=str(shared_data / "coco" / "annotations" / "instances_val2017_person_subset350.json"),
                progress=False, max_images=24, results_dir=str(tmp_path / "res"))
    ref = run_accuracy(RunConfig(**base, workers=0, record_outputs=str(tmp_path / "rec")))
    replay = dict(base, backend="replay", backend_options={"replay_dir": str(tmp_path / "rec")})
    for bs, streams in ((1, 1), (5, 2)):
        for _ in range(2):  # the second run reads the input cache the first one wrote
            got = run_accuracy(RunConfig(**replay, batch_size=bs, streams=streams, workers=2,
                                         input_cache=str(tmp_path / f"in{bs}")))
            assert got["metrics"] == ref["metrics"] and got["num_detections"] == ref["num_detections"]
        assert got["dataset"]["input_cache_hit"]


def test_consumer_stopping_early_ends_the_workers(items):
    loader = SharedBatchLoader(items, PRE, 1, workers=2)
    procs = list(loader.procs)
    for b in loader:
        break
    loader.close()
    assert all(p.exitcode is not None for p in procs)


def test_streamed_batches_are_not_pinned(items):
    """Through the run's streams (runs._in_streams) a batch is let go as soon as it is consumed: no loop variable
    of the loader, the streams or the consumer keeps it while the next one is awaited, so the loader cycles
    through `ahead` buffers (each new one costs a page fault per page in its owner worker). One batch in flight
    between the stream and the consumer: the stream takes the next only once the consumer is done with the last,
    so the count does not depend on scheduling."""
    from common.harness.runs import _in_streams
    seen = set()
    with SharedBatchLoader(items * 4, PRE, 8, workers=2) as loader:
        address = {b.ctypes.data: s for s, b in enumerate(loader.inputs)}
        for batch, _ in _in_streams(iter(loader), [None], lambda runner, b: None, ahead=1):
            seen.add(address[batch.inputs.ctypes.data])
            del batch
        assert len(seen) == loader.ahead, (seen, loader.ahead)


def test_a_signal_reaching_a_starting_worker_never_runs_the_parents_handler(items, tmp_path, monkeypatch):
    """Planted: each worker sends itself SIGTERM first thing, before it sets its own handlers. The parent's
    handler (the CLI's raises KeyboardInterrupt, which would unwind the parent's copied stack in the worker) must
    not run there: the signal waits until the worker has its own handlers, then ends it, and the parent reports
    the dead worker."""
    import common.data.loader as loader_module
    handled = tmp_path / "handled"

    def parents_handler(signum, frame):
        with open(handled, "a") as f:
            f.write(f"{os.getpid()}\n")

    real_worker = loader_module._worker

    def signalled_worker(*args):
        os.kill(os.getpid(), signal.SIGTERM)
        real_worker(*args)

    monkeypatch.setattr(loader_module, "_worker", signalled_worker)
    previous = signal.signal(signal.SIGTERM, parents_handler)
    try:
        with SharedBatchLoader(items, PRE, 4, workers=2) as loader:
            for p in loader.procs:
                p.join(timeout=10)
            codes = [p.exitcode for p in loader.procs]
            with pytest.raises(RuntimeFailure, match="decoding worker died"):
                list(loader)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not handled.exists(), handled.read_text()
    assert codes == [-signal.SIGTERM, -signal.SIGTERM]
