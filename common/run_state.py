"""Per-batch predictions of an accuracy run, checkpointed so an interrupted run resumes where it stopped.

Finished batches are buffered and written as one .npz chunk with an atomic rename every `interval_s` seconds
(and when the run is interrupted), so a kill (even kill -9) leaves only complete chunks and loses at most the
last interval. Chunks are not fsynced: a killed process loses nothing the kernel already has, and a chunk a
power cut leaves unreadable is recomputed like a missing one. Writing (and syncing) a file per batch cost more
than a tenth of a fast run's wall time. The state dir is keyed by everything that changes the predictions (ONNX content, spec
variant, precision, batch size, backend and device, annotation content, images dir, image limit): a run with
any of these changed never picks up another run's predictions. The chunks form a prefix of the run's image
list, because batches are processed in order.
"""
from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import numpy as np

from .engine_cache import atomic_write_bytes, cache_key


class RunState:
    def __init__(self, root: str | Path, onnx_sha256: str, interval_s: float = 1.0, **parts):
        self.key = cache_key(onnx_sha256, **parts)
        self.dir = Path(root) / self.key
        self.interval_s = interval_s
        self._pending: list[tuple] = []
        self._pending_start = 0
        self._last_write = time.monotonic()

    def load(self) -> tuple[int, list[dict]]:
        """(number of images already done, their chunks in order); chunks that do not parse are ignored
        together with everything after them, so they are simply recomputed."""
        chunks, done = [], 0
        for path in sorted(self.dir.glob("*.npz")):
            if int(path.stem) != done:
                break
            try:
                with np.load(path) as z:
                    chunk = {k: z[k] for k in z.files}
                chunk["nonfinite"] = json.loads(str(chunk["nonfinite"]))
            except (OSError, ValueError, KeyError, EOFError):
                break
            chunks.append(chunk)
            done += int(chunk["count"])
        return done, chunks

    def save(self, start: int, count: int, image_ids, boxes, scores, labels, nonfinite: dict):
        """Record one finished batch (images start .. start + count of the run's list)."""
        if not self._pending:
            self._pending_start = start
        self._pending.append((count, image_ids, boxes, scores, labels, nonfinite))
        if time.monotonic() - self._last_write >= self.interval_s:
            self.flush()

    def flush(self):
        """Write the buffered batches as one chunk."""
        if not self._pending:
            return
        count, ids, boxes, scores, labels, nonfinite = zip(*self._pending)
        merged: dict = {}
        for counts in nonfinite:
            for name, n in counts.items():
                merged[name] = merged.get(name, 0) + n
        buf = io.BytesIO()
        np.savez(buf, count=np.int64(sum(count)), image_ids=np.concatenate(ids), boxes=np.concatenate(boxes),
                 scores=np.concatenate(scores), labels=np.concatenate(labels), nonfinite=np.array(json.dumps(merged)))
        atomic_write_bytes(self.dir / f"{self._pending_start:09d}.npz", buf.getvalue(), durable=False)
        self._pending.clear()
        self._last_write = time.monotonic()

    def clear(self):
        shutil.rmtree(self.dir, ignore_errors=True)
