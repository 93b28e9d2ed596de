"""The --save-detections file (COCO results JSON), written while the run infers rather than built at its end.

At full scale (5000 images x 300 detections) the whole list of dicts and its JSON text took ~1 GB and ~14 s after
the run's clock had stopped. Here each batch's detections are formatted by a thread of its own, fed through a
bounded queue, and appended to a temporary file beside the destination; commit() waits for the last batch, syncs
the file and renames it over the destination, so a reader sees the old file or the complete new one, never half
of one. The bytes are those of json.dumps(to_coco_results(rows)) over all the rows in order.
"""

from __future__ import annotations

import os
import queue
import tempfile
import threading
from pathlib import Path

import numpy as np

from common.evaluate.metrics import coco_results_json
from common.fsaccess import shared_file_mode

# Batches formatted ahead of the writer at most: a writer slower than the run holds the run back rather than
# piling the rows up in memory.
QUEUE_BATCHES = 16


class DetectionsFile:
    """add() DetectionStore rows batch by batch, then commit() (or discard() on failure). An OSError of the
    writing thread (disk full) is raised by the next add() or by commit()."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)  # as the atomic write before it did (regress: dets/)
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.fchmod(fd, shared_file_mode())  # as open() would make it, not mkstemp's 0600
        self._file = os.fdopen(fd, "w", encoding="ascii", buffering=1 << 20)
        self._file.write("[")
        self._queue: queue.Queue = queue.Queue(QUEUE_BATCHES)
        self._error: OSError | None = None
        self._count = 0
        self._thread = threading.Thread(target=self._write, name="save-detections", daemon=True)
        self._thread.start()

    def _write(self):
        first = True
        while True:
            rows = self._queue.get()
            if rows is None:
                return
            if self._error is not None or not len(rows):
                continue  # drained, so that add() never blocks on a writer that stopped
            try:
                text = coco_results_json(rows)[1:-1]
                self._file.write(text if first else ", " + text)
                first = False
            except OSError as exc:
                self._error = exc

    @property
    def error(self) -> OSError | None:
        """The writing thread's error, if any."""
        return self._error

    def _raise(self):
        if self._error is not None:
            raise self._error

    def add(self, rows: np.ndarray):
        """Rows (image_id, x, y, w, h, score, category): one batch's detections, in the file's order."""
        self._raise()
        self._count += len(rows)
        self._queue.put(rows)

    def commit(self):
        """Wait for the writer, then publish the complete file under its name (synced first)."""
        self._queue.put(None)
        self._thread.join()
        try:
            self._raise()
            self._file.write("]")
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self.tmp, self.path)
        except BaseException:
            self.discard()
            raise

    def discard(self):
        """Stop and remove the temporary file: nothing half-written is left."""
        if self._thread.is_alive():
            self._error = self._error or OSError("discarded")
            self._queue.put(None)
            self._thread.join()
        try:
            self._file.close()
        except OSError:
            pass
        try:
            os.unlink(self.tmp)
        except OSError:
            pass

    def __len__(self) -> int:
        return self._count


def read_rows(path: str | Path) -> np.ndarray:
    """The rows (image_id, x, y, w, h, score, category) of a detections file: COCO results JSON as --save-detections
    writes it, or gzipped as baseline-update keeps it. ValueError / KeyError / TypeError on a malformed file,
    OSError on an unreadable one (the callers name the file)."""
    import gzip
    import json

    raw = Path(path).read_bytes()
    dets = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    return np.array([[d["image_id"], *d["bbox"], d["score"], d["category_id"]] for d in dets], np.float64).reshape(
        -1, 7
    )
