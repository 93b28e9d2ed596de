"""Per-batch predictions of an accuracy run, checkpointed so an interrupted run resumes where it stopped.

Each finished batch is written as one .npz chunk with an atomic rename, so a kill (even kill -9) leaves only
complete chunks. The state dir is keyed by everything that changes the predictions (ONNX content, spec
variant, precision, batch size, backend and device, annotation content, images dir, image limit): a run with
any of these changed never picks up another run's predictions. The chunks form a prefix of the run's image
list, because batches are processed in order.
"""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np

from .engine_cache import atomic_write_bytes, cache_key


class RunState:
    def __init__(self, root: str | Path, onnx_sha256: str, **parts):
        self.key = cache_key(onnx_sha256, **parts)
        self.dir = Path(root) / self.key

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
        buf = io.BytesIO()
        np.savez(buf, count=np.int64(count), image_ids=image_ids, boxes=boxes, scores=scores, labels=labels,
                 nonfinite=np.array(json.dumps(nonfinite)))
        atomic_write_bytes(self.dir / f"{start:09d}.npz", buf.getvalue())

    def clear(self):
        shutil.rmtree(self.dir, ignore_errors=True)
