"""A decoding loader that reaches the host's decode limit: workers write whole batches into shared memory.

data.BatchLoader's pool hands images over one future at a time and the parent copies every image into its batch,
which on 2 cores reached 0.47 of what two processes doing only cv2 read + letterbox reach. Here:
- batch buffers (inputs and geometry rows) are anonymous shared mappings made before the workers are forked; a
  worker decodes a run of several images of one batch straight into its rows, so per image nothing is pickled or
  copied, and one small message per run of images says it is done;
- each run of rows of each buffer has one owner: the worker that always decodes into it (its own task queue). A
  process pays a page fault for every page of a shared mapping it writes for the first time (~2-3 us a page in a
  VM, ~0.6-1 ms per 320x320 image), and fork does not carry page tables of shared mappings over: with any worker
  writing any row, every worker faulted in every buffer (measured: 76k faults for 350 images with 2 workers,
  against 46k with 1). With fixed owners each page is faulted once by one process and then reused warm, and the
  free list hands out the buffer freed last, so a run touches only as many buffers as it holds at once;
- the parent yields the shared buffer itself (a fresh array over it per batch); the buffer is reused only when
  that array and every view of it are gone (weakref.finalize), so a batch held by a stream or the cache writer
  stays intact. If every buffer is still held, the next batch is decoded in-process rather than waiting, so a
  consumer holding batches can never deadlock the loader;
- workers are plain forked processes reading one task queue; the parent notices a worker that died (exit code)
  instead of waiting forever, and a worker whose parent died exits by itself.
On an input cache hit the workers normalise the cached uint8 canvases into the same buffers instead of decoding.
Failures (unreadable image, size mismatch) are raised in order, after every earlier batch was yielded.
"""

from __future__ import annotations

import math
import mmap
import multiprocessing as mp
import os
import queue
import threading
import weakref
from collections.abc import Iterator

import numpy as np

from common.data.coco import Batch, BatchLoader, _init_worker, _load_one, signals_held
from common.errors import RuntimeFailure

# Images per worker task: enough to make the per-task messages negligible, few enough to balance the workers.
MAX_TASK_IMAGES = 8
WORKER_POLL_S = 1.0
MAX_BUFFER_BYTES = 1 << 30


def _shared(shape, dtype) -> np.ndarray:
    size = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return np.frombuffer(mmap.mmap(-1, size), dtype, count=int(np.prod(shape))).reshape(shape)


MADV_POPULATE_WRITE = 23  # Linux >= 5.14; an older kernel refuses it (EINVAL) and the pages fault in when written


def _populate(regions: list) -> None:
    """Fault these regions of the shared buffers into this process as a write would, without writing them: a
    system call made through ctypes, so this thread holds no interpreter lock while the worker decodes."""
    try:
        import ctypes

        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    for region in regions:
        madvise(region.ctypes.data, region.nbytes, MADV_POPULATE_WRITE)


def _from_cache(cache, pre, start: int, end: int, out: np.ndarray, meta_out: np.ndarray):
    """Rows [start, end) of an input cache hit, normalised into `out`; their pages then leave this process."""
    canvases, meta = cache.cached
    pre.normalize(canvases[start:end], meta[start:end], out)
    meta_out[:] = meta[start:end]
    cache.cache.release(start, end)


def _worker(items, pre, inputs, meta, tasks, results, parent_pid, canvas=False, cache=None, later=()):
    _init_worker(pre)
    # The rows this worker owns in the buffers its first tasks do not write: a process's first write to a shared
    # page costs ~2.5 us (a 32-image 320x320 float32 batch ~24-30 ms in this VM, against ~8 ms to normalise it
    # from the input cache), which at a fast device's pace left it idle over the first batches. Faulted in by a
    # thread here instead, while the first tasks run (5000 images at 2627 images/s: 1.040 -> 1.024 x the device
    # time between the first inference and the last batch, 8 runs each alternated; 1.040 -> 1.015 in a second).
    if later:
        regions = [inputs[slot][r0:r1] for slot, r0, r1 in later]
        threading.Thread(target=_populate, args=(regions,), name="populate", daemon=True).start()
    while True:
        try:
            task = tasks.get(timeout=WORKER_POLL_S)
        except queue.Empty:
            if os.getppid() != parent_pid:  # orphaned: the parent was killed
                return
            continue
        if task is None:
            return
        task_id, slot, pos, start, end = task
        try:
            if cache is not None:
                _from_cache(
                    cache, pre, start, end, inputs[slot][pos : pos + end - start], meta[slot, pos : pos + end - start]
                )
            else:
                for k in range(start, end):
                    _, meta[slot, pos + k - start] = _load_one(items[k], inputs[slot][pos + k - start], canvas)
            results.put((task_id, None))
        except BaseException as exc:  # noqa: BLE001 - re-raised in order by the parent
            try:
                results.put((task_id, exc))
            except Exception:  # noqa: BLE001 - an exception that cannot be pickled
                results.put((task_id, RuntimeFailure(f"decoding failed: {type(exc).__name__}: {exc}")))


class SharedBatchLoader(BatchLoader):
    """BatchLoader's interface (iteration, input cache, progress, context manager) with the shared-memory
    workers above. Create it before any runtime starts threads (it forks)."""

    def __init__(
        self,
        items,
        pre,
        batch_size: int,
        workers: int,
        progress: bool = False,
        desc: str = "images",
        cache_dir: str | None = None,
        buffers: int | None = None,
    ):
        super().__init__(items, pre, batch_size, 0, progress, desc, cache_dir)
        self.workers = workers
        self.procs: list = []
        self._finished = False
        self._stopping = False
        self.from_cache = False
        if workers < 1:
            return
        # On an input cache hit the workers normalise the cached canvases (a third of the parent's CPU per image
        # at a fast device's pace) into the same shared float32 buffers.
        self.from_cache = self.cached is not None
        # Buffers: enough batches in flight to keep every worker busy, plus the ones the consumer may hold
        # (stream threads, the re-ordering of results, the input cache writer).
        # A batch never holds more rows than there are images: --bs 100000 on 350 images needs 350-row buffers
        # (100000 rows of 320x320 are 122 GB a buffer, a mapping that fails).
        rows = max(1, min(batch_size, len(items)))
        shape = (rows, 3, pre.height, pre.width)
        wanted = max(2, math.ceil(2 * workers * MAX_TASK_IMAGES / rows)) + 4
        # uint8 canvases when they go to the input cache (normalised by each batch), else float32 inputs
        self.dtype = np.dtype(np.uint8 if self.canvas else np.float32)
        # bounded in memory (many workers and large inputs): at least 4 buffers, else at most MAX_BUFFER_BYTES
        self.n_buffers = buffers or min(wanted, max(4, MAX_BUFFER_BYTES // (int(np.prod(shape)) * self.dtype.itemsize)))
        # rows per task, and so the runs of rows that have one owner each
        self.per_task = max(1, min(MAX_TASK_IMAGES, math.ceil(rows / workers)))
        self.chunks = math.ceil(rows / self.per_task)
        self.ahead = max(1, self.n_buffers - 4)
        # one mapping per buffer: an array made over one of them is the base of every view of that batch
        self.maps = [mmap.mmap(-1, int(np.prod(shape)) * self.dtype.itemsize) for _ in range(self.n_buffers)]
        self.inputs = [np.frombuffer(m, self.dtype).reshape(shape) for m in self.maps]
        self.meta = _shared((self.n_buffers, rows, 6), np.float64)
        ctx = mp.get_context("fork")
        self.tasks, self.results = [ctx.Queue() for _ in range(workers)], ctx.Queue()
        self.free = list(range(self.n_buffers))
        self.free_lock = threading.Lock()
        with signals_held():
            for w in range(workers):
                p = ctx.Process(
                    target=_worker,
                    daemon=True,
                    args=(
                        items,
                        pre,
                        self.inputs,
                        self.meta,
                        self.tasks[w],
                        self.results,
                        os.getpid(),
                        self.canvas,
                        self if self.from_cache else None,
                        self._later_rows(w),
                    ),
                )
                p.start()
                self.procs.append(p)

    def __iter__(self) -> Iterator[Batch]:
        if self.procs and self.from_cache:
            return self._decoded()
        return super().__iter__()

    def _later_rows(self, worker: int) -> list:
        """(slot, first row, end row) of the runs `worker` owns in the buffers taken after the first (the free
        list hands out its last one first; its very last is seldom taken at all), and no more buffers than the
        run has batches after its first: a short run faults in nothing it will not write."""
        rows = self.inputs[0].shape[0]
        later = min(len(self.free) - 1, math.ceil(len(self.items) / rows))
        return [
            (slot, r, min(rows, r + self.per_task))
            for slot in self.free[::-1][1:later]
            for r in range(0, rows, self.per_task)
            if self.owner(slot, r) == worker
        ]

    def owner(self, slot: int, row: int) -> int:
        """The worker that decodes row `row` of buffer `slot`, always the same one (see the module's notes)."""
        # consecutive buffers start at different workers, so a batch smaller than a run still spreads the work
        return (slot * self.chunks + row // self.per_task) % self.workers

    def _release(self, slot: int):
        with self.free_lock:
            self.free.append(slot)

    def _take_slot(self):
        with self.free_lock:
            return self.free.pop() if self.free else None  # the last freed: its pages are already mapped

    def _wait(self, pending: dict, done: dict, task_ids) -> BaseException | None:
        """Block until every task of `task_ids` reported; its first error (or None)."""
        while any(t not in done for t in task_ids):
            try:
                task_id, err = self.results.get(timeout=WORKER_POLL_S)
            except queue.Empty:
                dead = [p for p in self.procs if p.exitcode is not None]
                if dead:
                    raise RuntimeFailure(f"a decoding worker died (exit code {dead[0].exitcode})") from None
                continue
            done[task_id] = err
        errors = [done.pop(t) for t in task_ids]
        return next((e for e in errors if e is not None), None)

    def _decoded(self) -> Iterator[Batch]:
        if not self.procs:
            yield from super()._decoded()
            return
        n, bs = len(self.items), self.batch_size
        n_batches = math.ceil(n / bs)
        ids = np.array([it.image_id for it in self.items], np.int64)
        per_task = self.per_task
        submitted: dict = {}  # batch index -> (slot, task ids)
        done: dict = {}
        next_task = 0
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=n, desc=self.desc, unit="img", dynamic_ncols=True)

        def submit(b: int) -> bool:
            nonlocal next_task
            slot = self._take_slot()
            if slot is None:
                return False
            start, end = b * bs, min(n, (b + 1) * bs)
            task_ids = []
            for s in range(start, end, per_task):
                self.tasks[self.owner(slot, s - start)].put((next_task, slot, s - start, s, min(end, s + per_task)))
                task_ids.append(next_task)
                next_task += 1
            submitted[b] = (slot, task_ids)
            return True

        # An input cache hit's first batch is normalised here, into private memory, while the workers start on the
        # next ones: a worker's first write to each shared buffer faults its pages in (~24 ms for a 32-image
        # 320x320 batch, against ~8 ms to normalise it), and the parent has nothing else to do before it.
        nxt = 1 if self.from_cache else 0
        try:
            for b in range(n_batches):
                while nxt < n_batches and nxt < b + self.ahead and submit(nxt):
                    nxt += 1
                    if nxt == n_batches:  # every task is queued: the workers leave after them, while the last
                        self._stop_workers()  # batches infer, instead of in close() after the last one
                start, end = b * bs, min(n, (b + 1) * bs)
                if b not in submitted:  # a cache hit's first batch, or every buffer is held downstream: here
                    nxt = max(nxt, b + 1)
                    inputs = np.empty((end - start, 3, self.pre.height, self.pre.width), self.dtype)
                    meta = np.empty((end - start, 6), np.float64)
                    if self.from_cache:
                        _from_cache(self, self.pre, start, end, inputs, meta)
                    else:
                        _init_worker(self.pre, own_process=False)
                        for k in range(start, end):
                            inputs[k - start], meta[k - start] = _load_one(self.items[k], None, self.canvas)
                    yield self._batch(ids[start:end], inputs, meta)
                else:
                    slot, task_ids = submitted.pop(b)
                    err = self._wait(submitted, done, task_ids)
                    if err is not None:
                        self._release(slot)
                        raise err
                    # a fresh array over the buffer: when it and all its views are gone, the buffer is free again
                    # numpy makes this array the base of every view taken from it (reshape, slices), so the
                    # finalizer runs only once no view of the batch is left
                    raw = np.frombuffer(self.maps[slot], self.dtype)
                    weakref.finalize(raw, self._release, slot)
                    inputs = raw.reshape(self.inputs[slot].shape)[: end - start]
                    del raw
                    yield self._batch(ids[start:end], inputs, self.meta[slot, : end - start].copy())
                    del inputs
                if bar is not None:
                    bar.update(end - start)
            self._finished = True
        finally:
            if bar is not None:
                bar.close()

    def _stop_workers(self):
        """Each worker's last task: leave (after the tasks queued before it)."""
        if not self._stopping:
            self._stopping = True
            for tasks in self.tasks:
                tasks.put(None)

    def close(self):
        """Stop the decoding processes (they leave by themselves after a full pass, are terminated, then
        killed, otherwise) and close their queues: no process or feeder thread outlives the loader."""
        procs, self.procs = self.procs, []
        if not procs:
            return super().close()
        if self._finished:  # nothing queued: let them leave by themselves
            self._stop_workers()
            for p in procs:
                p.join(timeout=2.0)
        for p in procs:  # stopped early (error, Ctrl-C, consumer gone): queued tasks are not worth waiting for
            if p.exitcode is None:
                p.terminate()
                p.join(timeout=2.0)
            if p.exitcode is None:  # still there 2 s after SIGTERM (stuck in a call that does not return)
                p.kill()
                p.join(timeout=10.0)
        for q in (*self.tasks, self.results):  # end the queues' feeder threads now, not at some later collection
            q.cancel_join_thread()  # never block on tasks no worker will read (a worker that died)
            q.close()
            q.join_thread()
        super().close()


def open_loader(
    items,
    pre,
    batch_size: int,
    workers: int = 1,
    progress: bool = False,
    desc: str = "images",
    cache_dir: str | None = None,
) -> BatchLoader:
    """The shared-memory loader where processes can be forked and decoding happens in workers, else BatchLoader."""
    if workers > 0 and "fork" in mp.get_all_start_methods():
        return SharedBatchLoader(items, pre, batch_size, workers, progress, desc, cache_dir)
    return BatchLoader(items, pre, batch_size, workers, progress, desc, cache_dir)
