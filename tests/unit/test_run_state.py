"""Resume checkpoints: batches are buffered and written as one chunk per interval, and read back in order."""
import numpy as np

from common.harness.run_state import RunState


def _batch(rng, start, n):
    ids = np.arange(start, start + n, dtype=np.int64)
    return ids, rng.random((n, 4)), rng.random(n), rng.integers(0, 3, n)


def test_buffered_batches_become_one_chunk(tmp_path):
    rng = np.random.default_rng(0)
    state = RunState(tmp_path, "abc", interval_s=3600, model="m")
    batches = [_batch(rng, s, 4) for s in range(0, 12, 4)]
    for i, b in enumerate(batches):
        state.save(i * 4, 4, *b, {"dets": 1} if i else {})
    assert not list(state.dir.glob("*.npz")), "nothing is written before the interval has passed"
    state.flush()
    done, chunks = state.load()
    assert done == 12 and len(chunks) == 1
    assert np.array_equal(chunks[0]["image_ids"], np.concatenate([b[0] for b in batches]))
    assert np.array_equal(chunks[0]["boxes"], np.concatenate([b[1] for b in batches]))
    assert chunks[0]["nonfinite"] == {"dets": 2}


def test_zero_interval_writes_every_batch_and_load_stops_at_a_gap(tmp_path):
    rng = np.random.default_rng(1)
    state = RunState(tmp_path, "abc", interval_s=0, model="m")
    for start in (0, 2, 4):
        state.save(start, 2, *_batch(rng, start, 2), {})
    assert len(list(state.dir.glob("*.npz"))) == 3
    (state.dir / f"{2:09d}.npz").write_bytes(b"damaged")
    done, chunks = state.load()
    assert done == 2 and len(chunks) == 1, "a damaged chunk and everything after it are recomputed"


def test_an_edited_annotation_file_never_resumes_the_old_chunks(tmp_path, monkeypatch):
    """The run keys its state by the annotation file's remembered digest (file_sha256_memo): editing the file
    changes the digest, so chunks matched against the old annotations are not resumed."""
    import common.engine_cache as ec
    monkeypatch.setattr(ec, "_MEMO_SETTLED_NS", -10**18)   # remembered at once, as an old file would be
    ann, memo = tmp_path / "ann.json", tmp_path / "sha256"
    ann.write_text('{"images": [], "annotations": [], "categories": []}')
    rng = np.random.default_rng(2)
    state = RunState(tmp_path / "s", "abc", interval_s=0, annotation=ec.file_sha256_memo(ann, memo))
    state.save(0, 2, *_batch(rng, 0, 2), {})
    again = RunState(tmp_path / "s", "abc", interval_s=0, annotation=ec.file_sha256_memo(ann, memo))
    assert again.load()[0] == 2                                 # the same file: resumed
    ann.write_text('{"images": [], "annotations": [], "categories": [{"id": 1}]}')   # planted: edited in place
    edited = RunState(tmp_path / "s", "abc", interval_s=0, annotation=ec.file_sha256_memo(ann, memo))
    assert edited.load() == (0, [])
