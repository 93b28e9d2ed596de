"""Per-batch predictions of an accuracy run, checkpointed so an interrupted run resumes where it stopped.

Finished batches are buffered and written as one .npz chunk with an atomic rename every `interval_s` seconds
(and when the run is interrupted), so a kill (even kill -9) leaves only complete chunks and loses at most the
last interval. Chunks are not fsynced: a killed process loses nothing the kernel already has, and a chunk a
power cut leaves unreadable is recomputed like a missing one. Writing (and syncing) a file per batch cost more
than a tenth of a fast run's wall time. The state dir is keyed by everything that changes the predictions (ONNX
content, spec variant, precision, batch size, backend and device, annotation content, images dir, image limit): a run
with any of these changed never picks up another run's predictions. The chunks form a prefix of the run's image
list, because batches are processed in order.

A run claims its state dir with an exclusive lock (held until it ends; the kernel drops it on kill -9): a second,
concurrent identical run finds the lock taken and neither adopts the live run's chunks (it would report a
resumed run that never was interrupted) nor writes its own beside them.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import shutil
import sys
import time
import zipfile
import zlib
from pathlib import Path
from typing import IO

import numpy as np

from common.engine_cache import atomic_write_bytes, cache_key


class RunState:
    def __init__(self, root: str | Path, onnx_sha256: str, interval_s: float = 1.0, **parts):
        self.key = cache_key(onnx_sha256, **parts)
        self.root = Path(root)
        self.dir = self.root / self.key
        self.interval_s = interval_s
        self._pending: list[tuple] = []
        self._pending_start = 0
        self._last_write = time.monotonic()
        self._lock: IO | None = None
        self.enabled = True  # False when another live run owns this state (or it cannot be written)
        self._foreign = False

    def claim(self) -> bool:
        """Take this state's lock (kept until clear() or the process ends). False when a live run holds it:
        then this run neither resumes nor checkpoints."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            lock = open(self.dir / "lock", "a+b")
        except OSError as exc:
            print(
                f"warning: {self.dir}: cannot keep resume state ({exc.strerror}); the run goes on without checkpoints",
                file=sys.stderr,
            )
            self.enabled = False
            return False
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            self.enabled, self._foreign = False, True
            print(
                f"note: an identical run is in progress ({self.dir}); this run computes every image itself "
                "and keeps no resume state",
                file=sys.stderr,
            )
            return False
        self._lock = lock
        return True

    def discard(self):
        """Delete the chunks an earlier run left (a run that does not resume from them)."""
        for path in self.dir.glob("*.npz"):
            path.unlink(missing_ok=True)

    def load(self) -> tuple[int, list[dict]]:
        """(number of images already done, their chunks in order). A chunk that does not read back whole
        (truncated, damaged, a gap before it) is deleted together with every chunk after it, so those images
        are recomputed and the chunks rewritten."""
        if not self.enabled:
            return 0, []
        chunks, done = [], 0
        paths = sorted(self.dir.glob("*.npz"))
        for k, path in enumerate(paths):
            chunk = self._read(path) if path.stem.isdigit() and int(path.stem) == done else None
            if chunk is None:
                for stale in paths[k:]:
                    stale.unlink(missing_ok=True)
                break
            chunks.append(chunk)
            done += int(chunk["count"])
        return done, chunks

    @staticmethod
    def _read(path: Path) -> dict | None:
        try:
            with np.load(path) as z:
                chunk = {k: z[k] for k in z.files}
            chunk["nonfinite"] = json.loads(str(chunk["nonfinite"]))
            n = len(chunk["image_ids"])
            if (
                int(chunk["count"]) < 1
                or len(chunk["boxes"]) != n
                or len(chunk["scores"]) != n
                or len(chunk["labels"]) != n
            ):
                return None
        except (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile, zlib.error):
            return None  # whatever a partial or damaged file raises: recomputed
        return chunk

    def save(self, start: int, count: int, image_ids, boxes, scores, labels, nonfinite: dict):
        """Record one finished batch (images start .. start + count of the run's list)."""
        if not self.enabled:
            return
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
        np.savez(
            buf,
            count=np.int64(sum(count)),
            image_ids=np.concatenate(ids),
            boxes=np.concatenate(boxes),
            scores=np.concatenate(scores),
            labels=np.concatenate(labels),
            nonfinite=np.array(json.dumps(merged)),
        )
        try:
            atomic_write_bytes(self.dir / f"{self._pending_start:09d}.npz", buf.getvalue(), durable=False)
        except OSError as exc:
            # checkpoints only make an interruption cheaper: a full disk must not end a run that can finish
            # (and whose record may still fit), so the run goes on without them, saying so once
            print(
                f"warning: {self.dir}: cannot save resume state ({exc.strerror}); the run goes on without checkpoints",
                file=sys.stderr,
            )
            self.enabled = False
        self._pending.clear()
        self._last_write = time.monotonic()

    def release(self):
        """The run ends without a record: keep the finished batches (buffered ones written now) for a rerun,
        but leave no dir that holds none."""
        if self.enabled:
            self.flush()  # a failure to write only warns (flush)
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        if self._foreign or any(self.dir.glob("*.npz")):
            return
        shutil.rmtree(self.dir, ignore_errors=True)
        try:
            os.rmdir(self.root)
        except OSError:
            pass

    def clear(self):
        """Forget the state once the run's record is safely written; the .run-state dir goes too when empty."""
        if self._foreign:
            return  # the live owner's state
        shutil.rmtree(self.dir, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        try:
            os.rmdir(self.root)  # only succeeds when no other run keeps state there
        except OSError:
            pass
