"""--save-detections streamed: the same text as one json.dumps at the end, written batch by batch by a thread;
a failed write leaves nothing half-written."""
import errno
import json
import os

import numpy as np
import pytest

from common.evaluate.detections_file import DetectionsFile
from common.evaluate.metrics import coco_results_json, to_coco_results


def _rows(n, seed):
    rng = np.random.default_rng(seed)
    rows = rng.random((n, 7)) * 1000
    rows[:, 0] = rng.integers(0, 10**12, n)
    rows[:, 6] = rng.integers(1, 91, n)
    rows[:, 5] = rng.random(n).astype(np.float32)  # scores come from float32 outputs
    return rows


def test_the_formatted_text_is_json_dumps_of_the_results():
    rows = _rows(700, 1)
    rows[:4, 1:6] = [[-0.0, 5e-324, 1e300, 2.5, 0.1], [0.0, 1e-7, 123456789.125, 1e16, 1.0],
                     [3.0, 4.0, 5.0, 6.0, 0.5], [1 / 3, 2 / 3, 1e-300, 7e22, 0.999]]
    assert coco_results_json(rows) == json.dumps(to_coco_results(rows))
    assert coco_results_json(np.empty((0, 7))) == json.dumps([]) == "[]"
    rows[5, 2], rows[6, 5] = np.nan, np.inf  # JSON's own spelling of these, as before
    assert coco_results_json(rows) == json.dumps(to_coco_results(rows))


def test_streamed_file_equals_one_dump_of_all_rows(tmp_path, monkeypatch):
    monkeypatch.setattr("common.evaluate.detections_file.QUEUE_BATCHES", 2)  # the writer falls behind: add() waits
    chunks = [_rows(n, s) for s, n in enumerate((300, 0, 1, 257, 0, 999, 5))]
    path = tmp_path / "dets.json"
    path.write_text("old")
    out = DetectionsFile(path)
    for c in chunks:
        out.add(c)
    assert path.read_text() == "old"   # published only when complete
    out.commit()
    assert path.read_bytes() == json.dumps(to_coco_results(np.concatenate(chunks))).encode()
    assert len(out) == sum(map(len, chunks)) and os.listdir(tmp_path) == ["dets.json"]
    empty = DetectionsFile(tmp_path / "none.json")
    empty.commit()
    assert json.loads((tmp_path / "none.json").read_text()) == []


def test_a_failed_write_leaves_nothing_half_written(tmp_path, monkeypatch):
    path = tmp_path / "dets.json"
    path.write_text("old")
    out = DetectionsFile(path)

    def full(text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(out._file, "write", full)
    out.add(_rows(10, 2))
    with pytest.raises(OSError, match="No space left"):
        out.commit()
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["dets.json"]
    discarded = DetectionsFile(path)
    discarded.add(_rows(10, 3))
    discarded.discard()
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["dets.json"]
