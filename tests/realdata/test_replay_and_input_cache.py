"""Replay backend and preprocessed-input cache on the real model and images."""
import dataclasses
import json
import os

import numpy as np
import pytest

from common.data.coco import BatchLoader, image_items, read_annotations
from common.errors import ConfigError
from common.data.input_cache import InputCache
from common.data.preprocess import Preprocessor
from common.harness.runs import RunConfig, run_accuracy
from common.config.specs import Preprocess
from synthetic_coco import make_synthetic_coco

PERSON350 = "instances_val2017_person_subset350.json"


def _cfg(shared_data, rtmdet_onnx, **kw):
    base = dict(model="rtmdet", onnx=str(rtmdet_onnx), images_dir=str(shared_data / "coco" / "val2017"),
                annotation=str(shared_data / "coco" / "annotations" / PERSON350), progress=False, workers=0,
                max_images=60)
    base.update(kw)
    return RunConfig(**base)


def test_replay_reproduces_the_recorded_run(shared_data, rtmdet_onnx, tmp_path):
    rec_dir = tmp_path / "rec"
    live = run_accuracy(_cfg(shared_data, rtmdet_onnx, record_outputs=str(rec_dir), batch_size=4))
    manifest = json.loads((rec_dir / "manifest.json").read_text())
    assert len(manifest["image_ids"]) == 60 and set(manifest["outputs"]) == {"dets", "labels"}
    for bs, streams in ((1, 1), (7, 2)):  # other batching and concurrency than the recording
        replay = run_accuracy(_cfg(shared_data, rtmdet_onnx, backend="replay", batch_size=bs, streams=streams,
                                   backend_options={"replay_dir": str(rec_dir)}))
        assert replay["backend"] == "replay"
        assert replay["metrics"] == live["metrics"]
        assert replay["num_detections"] == live["num_detections"]


def test_replay_refuses_another_model_or_missing_images(shared_data, rtmdet_onnx, tmp_path):
    rec_dir = tmp_path / "rec"
    run_accuracy(_cfg(shared_data, rtmdet_onnx, record_outputs=str(rec_dir), max_images=5))
    other = tmp_path / "other.onnx"
    other.write_bytes(rtmdet_onnx.read_bytes() + b"\0")
    with pytest.raises(ConfigError, match="another ONNX model"):
        run_accuracy(_cfg(shared_data, other, backend="replay", backend_options={"replay_dir": str(rec_dir)}))
    from common.errors import InputError
    with pytest.raises(InputError, match="no recorded outputs for image"):
        run_accuracy(_cfg(shared_data, rtmdet_onnx, backend="replay", max_images=10,
                          backend_options={"replay_dir": str(rec_dir)}))


def test_a_run_leaves_the_garbage_collector_as_it_found_it(shared_data, rtmdet_onnx, tmp_path):
    """A run freezes the objects that exist before it (gc.freeze) and unfreezes them when it ends, passed or
    failed; a caller's own freeze is left alone."""
    import gc
    rec_dir = tmp_path / "rec"
    assert gc.get_freeze_count() == 0
    run_accuracy(_cfg(shared_data, rtmdet_onnx, record_outputs=str(rec_dir), max_images=5))
    assert gc.get_freeze_count() == 0
    with pytest.raises(Exception, match="no recorded outputs for image"):
        run_accuracy(_cfg(shared_data, rtmdet_onnx, backend="replay", max_images=10,
                          backend_options={"replay_dir": str(rec_dir)}))
    assert gc.get_freeze_count() == 0
    # the caller's own frozen objects stay frozen: a sentinel of theirs stays out of the collected generations
    # (the count itself may drop: a frozen object the run lets go of, e.g. a replaced cache entry, is freed)
    sentinel = [object()]
    gc.freeze()
    try:
        assert not any(o is sentinel for o in gc.get_objects())
        run_accuracy(_cfg(shared_data, rtmdet_onnx, backend="replay", max_images=5,
                          backend_options={"replay_dir": str(rec_dir)}))
        assert gc.get_freeze_count() > 0 and not any(o is sentinel for o in gc.get_objects())
    finally:
        gc.unfreeze()
    assert any(o is sentinel for o in gc.get_objects())


def test_input_cache_hit_gives_identical_results(shared_data, rtmdet_onnx, tmp_path):
    cache = tmp_path / "cache"
    first = run_accuracy(_cfg(shared_data, rtmdet_onnx, input_cache=str(cache)))
    second = run_accuracy(_cfg(shared_data, rtmdet_onnx, input_cache=str(cache), batch_size=3))
    assert first["dataset"]["input_cache_hit"] is False and second["dataset"]["input_cache_hit"] is True
    assert first["metrics"] == second["metrics"]
    assert len(list(cache.glob("*.inputs.npy"))) == 1 and not list(cache.glob(".*tmp"))


def test_input_cache_invalidation_and_partial_runs(tmp_path):
    images, ann = make_synthetic_coco(tmp_path / "syn", n_images=5, seed=2)
    items = image_items(read_annotations(ann), images)
    pre = Preprocessor(Preprocess(mean=(1, 2, 3), std=(2, 2, 2)), 64, 80)
    cache_dir = tmp_path / "cache"
    loader = BatchLoader(items, pre, 2, workers=0, cache_dir=str(cache_dir))
    next(iter(loader))  # an interrupted pass publishes nothing
    loader.close()
    assert InputCache(cache_dir, items, pre).lookup() is None
    fresh = [b.inputs.copy() for b in BatchLoader(items, pre, 2, workers=0, cache_dir=str(cache_dir))]
    hit = InputCache(cache_dir, items, pre).lookup()
    assert hit is not None
    assert hit[0].dtype == np.uint8  # the letterboxed canvases, a quarter of the float32 inputs' bytes
    np.testing.assert_array_equal(np.concatenate(fresh), pre.normalize(hit[0], hit[1]))
    # other preprocessing -> another entry; a touched image -> another entry
    assert InputCache(cache_dir, items, Preprocessor(Preprocess(mean=(0, 2, 3), std=(2, 2, 2)), 64, 80)).lookup() is None
    st = os.stat(items[0].path)
    os.utime(items[0].path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert InputCache(cache_dir, image_items(read_annotations(ann), images), pre).lookup() is None  # a run lists anew


def test_concurrent_cache_builders_leave_one_valid_entry(tmp_path):
    import subprocess
    import sys
    images, ann = make_synthetic_coco(tmp_path / "syn", n_images=12, seed=4)
    code = f"""
import sys; sys.path[:0] = {[str(p) for p in (tmp_path.parent, )]!r}
from common.data.coco import BatchLoader, image_items, read_annotations
from common.data.preprocess import Preprocessor
from common.config.specs import Preprocess
items = image_items(read_annotations({str(ann)!r}), __import__('pathlib').Path({str(images)!r}))
pre = Preprocessor(Preprocess(), 96, 96)
for _ in BatchLoader(items, pre, 1, workers=0, cache_dir={str(tmp_path / 'c')!r}): pass
"""
    from helpers import REPO
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(3)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    items = image_items(read_annotations(ann), images)
    hit = InputCache(tmp_path / "c", items, Preprocessor(Preprocess(), 96, 96)).lookup()
    assert hit is not None and hit[0].shape == (12, 3, 96, 96)
    assert not list((tmp_path / "c").glob(".*"))


def test_input_cache_key_is_unchanged(tmp_path):
    """The key's bytes are still json.dumps([id, path, size, mtime_ns]) per image after the settings' key, so the
    entries written before keep being found: names with quotes, backslashes, non-ASCII and control characters."""
    import hashlib
    from common.data.coco import ImageItem
    from common.data.input_cache import cache_key
    names = ["a.jpg", 'q"uote.jpg', "back\\slash.jpg", "caf\u00e9 \u4e2d.jpg", "tab\there.jpg"]
    items = []
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(b"x" * i)
        items.append(ImageItem(10**12 + i, str(tmp_path / name), 4, 3))
    pre = Preprocessor(Preprocess(), 32, 48)
    h = hashlib.sha256(pre.spec.key(pre.height, pre.width).encode())
    for it in items:
        st = os.stat(it.path)
        h.update(json.dumps([it.image_id, it.path, st.st_size, st.st_mtime_ns]).encode())
    assert cache_key(items, pre) == h.hexdigest()[:32]
    # the stamps image_items takes give the same key; a file that changed since gives another one
    stamped = [dataclasses.replace(it, stamp=(os.stat(it.path).st_size, os.stat(it.path).st_mtime_ns)) for it in items]
    assert cache_key(stamped, pre) == h.hexdigest()[:32]
    stamped[2] = dataclasses.replace(stamped[2], stamp=(stamped[2].stamp[0] + 1, stamped[2].stamp[1]))
    assert cache_key(stamped, pre) != h.hexdigest()[:32]


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("spec", [Preprocess(mean=(1.5, 77.25, 255.0), std=(0.3, 57.12, 3.0), pad_value=114.5),
                                  Preprocess(pad="center", color="rgb", mean=(103.53, 116.28, 123.675),
                                             std=(57.375, 57.12, 58.395)),
                                  Preprocess(resize="stretch", color="rgb", std=(255.0, 255.0, 255.0))],
                         ids=["bottom-right-fractional-pad", "center-rgb", "stretch"])
def test_cached_inputs_are_bit_identical_to_the_uncached_ones(tmp_path, spec, workers):
    """The float32 inputs a run gets without the cache, while building it and from it are the same bits, with
    images of other aspect ratios (margins on either side), a pad value a uint8 canvas cannot hold, and the
    decoding (and a hit's normalising) in worker processes or in-process."""
    from common.data.loader import open_loader
    images, ann = make_synthetic_coco(tmp_path / "syn", n_images=7, seed=5)
    items = image_items(read_annotations(ann), images)
    pre = Preprocessor(spec, 72, 88)

    def inputs(cache_dir):
        with open_loader(items, pre, 3, workers=workers, cache_dir=cache_dir) as loader:
            got = [(b.image_ids.copy(), b.inputs.copy(), b.meta.copy()) for b in loader]
            # a hit with workers is normalised by them (common/data/loader.py), in-process without
            assert getattr(loader, "from_cache", False) == (workers > 0 and loader.cached is not None)
            return got, loader.cached is not None
    plain, _ = inputs(None)
    building, hit_1 = inputs(str(tmp_path / "cache"))
    cached, hit_2 = inputs(str(tmp_path / "cache"))
    assert (hit_1, hit_2) == (False, True)
    assert len(plain) == 3
    for a, b, c in zip(plain, building, cached):
        for x, y, z in zip(a, b, c):
            assert x.dtype == y.dtype == z.dtype and x.tobytes() == y.tobytes() == z.tobytes()


def _rss_file_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssFile:"))


def test_reading_the_input_cache_lets_its_pages_go(tmp_path):
    """A mapped file's pages count in the process's RSS: a run reading a 6 GB entry would end at 6 GB. The loader
    lets go of the pages of batches read long ago, so reading the whole entry leaves only the last few mapped."""
    images, ann = make_synthetic_coco(tmp_path / "syn", n_images=48, seed=6, size=(120, 160))
    items = image_items(read_annotations(ann), images)
    pre = Preprocessor(Preprocess(), 256, 256)
    for _ in BatchLoader(items, pre, 2, workers=0, cache_dir=str(tmp_path / "c")):
        pass
    entry = 48 * 3 * 256 * 256 // 1024
    with BatchLoader(items, pre, 2, workers=0, cache_dir=str(tmp_path / "c")) as loader:
        assert loader.cached is not None
        before = _rss_file_kb()
        for b in loader:
            b.inputs  # noqa: B018 - normalised, so every page of the batch was read
        grown = _rss_file_kb() - before
    assert grown < entry // 2, (grown, entry)
