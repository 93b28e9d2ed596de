"""LoadGen's query sample library and system under test over the suite's preprocessed inputs and a Runner.

The library holds every image of the run preprocessed (the input cache's memory map, or an array filled by the
loader): LoadGen's load / unload calls only say which samples the test will ask for. The SUT answers each query
sample with its detections: queued samples are taken by `streams` worker threads, each forming a batch of up to
the engine's batch size from what is waiting; in the Server scenario a batch that is not full waits up to
`max_wait_s` after its first sample for more to arrive (dynamic batching), so a lone query costs at most that
wait. Every wait is bounded, and a failure (inference raised) answers every outstanding sample at once, so
LoadGen's test always ends and the error is raised by the driver afterwards.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np


class SampleLibrary:
    """Preprocessed inputs [N, 3, H, W], their geometry rows [N, 6] and image ids [N], by LoadGen sample index.
    With `normalize(canvases, meta) -> float32 inputs` the inputs are the input cache's uint8 canvases, normalised
    per gathered batch (Preprocessor.normalize: bit-identical to preprocessing afresh)."""

    def __init__(self, inputs: np.ndarray, meta: np.ndarray, image_ids: np.ndarray, normalize=None):
        self.inputs, self.meta, self.image_ids = inputs, meta, np.asarray(image_ids, np.int64)
        self.normalize = normalize
        self.loaded: set = set()

    def batch(self, idx: np.ndarray) -> np.ndarray:
        """The float32 input batch of these sample indices."""
        x = self.inputs[idx]
        return x if self.normalize is None else self.normalize(x, self.meta[idx])

    def __len__(self):
        return len(self.image_ids)

    def load(self, samples):
        """LoadGen's load_samples_to_ram: the inputs are already in memory (or mapped); remembered for checks."""
        self.loaded.update(samples)

    def unload(self, samples):
        """LoadGen's unload_samples_from_ram: nothing to free (the library stays for the next test)."""
        self.loaded.difference_update(samples)


class BatchingSUT:
    """Answers LoadGen's query samples by batches, one worker thread per `infers` entry (`infer(x, image_ids)
    -> outputs`: one runner each, or one runner that serves several threads at once).

    `decode(outputs, meta)` is applied to every batch (a query's answer is its detections); with `log_data`
    it must give one [k, 6] float32 array per image (x1, y1, x2, y2, score, label per detection).
    `complete(responses)` is LoadGen's QuerySamplesComplete and `response(id, array or None)` builds one
    response; with `log_data` each response carries its detections' bytes (LoadGen's accuracy log), else none.
    `needs_inputs` False (a replay runner serves stored outputs by image id) skips gathering the input batch.
    """

    def __init__(
        self,
        library: SampleLibrary,
        infers: list,
        decode,
        batch_size: int,
        complete,
        response,
        max_wait_s: float = 0.0,
        log_data: bool = False,
        needs_inputs: bool = True,
        clock=time.perf_counter,
    ):
        self.library, self.decode = library, decode
        self.batch_size, self.max_wait_s = batch_size, max_wait_s
        self.complete, self.response, self.log_data, self.needs_inputs = complete, response, log_data, needs_inputs
        self.clock = clock
        self._pending: deque = deque()  # (response id, sample index, issue time)
        self._cond = threading.Condition()
        self._stop = False
        self.error: BaseException | None = None
        # per batch: (samples, seconds in infer, seconds in the SUT outside infer, seconds its first sample was
        # queued, seconds from its first sample's issue to its answer)
        self.batches: list[tuple] = []
        self._threads = [
            threading.Thread(target=self._work, args=(infer,), daemon=True, name=f"sut-{i}")
            for i, infer in enumerate(infers)
        ]
        for t in self._threads:
            t.start()

    # ---- LoadGen's callbacks
    def issue_queries(self, samples):
        """LoadGen's IssueQuery: the samples queued for the batching workers, stamped with their arrival time
        (after a worker's failure, answered at once with no detections)."""
        now = self.clock()
        with self._cond:
            failed = self.error is not None
            if not failed:
                self._pending.extend((s.id, s.index, now) for s in samples)
                self._cond.notify_all()
        if failed:
            self.complete([self.response(s.id, None) for s in samples])

    def flush_queries(self):
        """LoadGen's end of a Server run: every query is already queued; nothing is held back."""

    # ---- the workers
    def _take(self) -> list:
        """Up to batch_size queued samples (blocks for the first; Server: waits max_wait_s for the rest)."""
        with self._cond:
            while not self._pending and not self._stop:
                self._cond.wait()
            if self._stop:
                return []
            if self.max_wait_s > 0 and len(self._pending) < self.batch_size:
                deadline = self._pending[0][2] + self.max_wait_s
                while len(self._pending) < self.batch_size and not self._stop:
                    left = deadline - self.clock()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            n = min(self.batch_size, len(self._pending))
            return [self._pending.popleft() for _ in range(n)]

    def _work(self, infer):
        while True:
            taken = self._take()
            if not taken:
                return
            t0 = self.clock()
            try:
                self._run(infer, taken, t0)
            except BaseException as exc:  # noqa: BLE001 - raised by the driver once LoadGen's test has ended
                self._fail(exc, taken)

    def _run(self, infer, taken: list, t0: float):
        ids = [t[0] for t in taken]
        idx = np.fromiter((t[1] for t in taken), np.int64, len(taken))
        lib = self.library
        x = lib.batch(idx) if self.needs_inputs else None
        t1 = self.clock()
        outputs = infer(x, lib.image_ids[idx])
        t2 = self.clock()
        dets = self.decode(outputs, lib.meta[idx])
        if self.log_data:
            rows = [np.ascontiguousarray(d, np.float32) for d in dets]
            responses = [self.response(i, r) for i, r in zip(ids, rows)]
        else:
            responses = [self.response(i, None) for i in ids]
        self.complete(responses)  # LoadGen copies logged bytes during this call: `rows` may go afterwards
        t3 = self.clock()
        self.batches.append((len(taken), t2 - t1, (t1 - t0) + (t3 - t2), t0 - taken[0][2], t3 - taken[0][2]))

    def _fail(self, exc: BaseException, taken: list):
        with self._cond:
            if self.error is None:
                self.error = exc
            rest = list(self._pending)
            self._pending.clear()
        self.complete([self.response(t[0], None) for t in taken + rest])

    def close(self):
        """Stop the workers (after LoadGen's test returned: nothing is queued any more)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        for t in self._threads:
            t.join()

    def overhead(self) -> dict:
        """The SUT's own time per sample outside the runner (gathering, decoding, answering), and its batches."""
        if not self.batches:
            return {"batches": 0, "samples": 0}
        b = np.asarray(self.batches, np.float64)
        samples = int(b[:, 0].sum())
        return {
            "batches": len(b),
            "samples": samples,
            "mean_batch": samples / len(b),
            "infer_s": float(b[:, 1].sum()),
            "harness_s": float(b[:, 2].sum()),
            "harness_us_per_sample": float(b[:, 2].sum() / samples * 1e6),
            "harness_ms_per_batch_p90": float(np.percentile(b[:, 2], 90) * 1e3),
            "queued_ms_p99": float(np.percentile(b[:, 3], 99) * 1e3),
            # issue -> answer of each batch's first sample as the SUT saw it (LoadGen measures the same span)
            **{f"latency_ms_p{q}": float(np.percentile(b[:, 4], q) * 1e3) for q in (50, 90, 99)},
        }
