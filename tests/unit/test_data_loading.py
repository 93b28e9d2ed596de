import json
import time

import numpy as np
import pytest

from common.data.coco import image_items, iter_batches, read_annotations, resolve_dataset
from common.errors import ConfigError, InputError
from common.data.preprocess import Preprocessor
from common.config.specs import Preprocess
from synthetic_coco import make_synthetic_coco


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_synthetic_coco(tmp_path_factory.mktemp("syn"), n_images=7, seed=5)


def test_layouts_are_resolved(synthetic):
    images, ann = synthetic
    root = images.parent.parent
    assert resolve_dataset(str(root), ann.name) == (images, ann)
    with pytest.raises(ConfigError):
        resolve_dataset(None, "instances_synthetic.json")


def test_worker_batches_equal_in_process_batches(synthetic):
    images, ann = synthetic
    items = image_items(read_annotations(ann), images)
    pre = Preprocessor(Preprocess(mean=(1, 2, 3), std=(4, 5, 6)), 96, 128)
    serial = list(iter_batches(items, pre, batch_size=3, workers=0))
    parallel = list(iter_batches(items, pre, batch_size=3, workers=2))
    assert [len(b.image_ids) for b in serial] == [3, 3, 1]
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a.image_ids, b.image_ids)
        np.testing.assert_array_equal(a.inputs, b.inputs)
        np.testing.assert_array_equal(a.meta, b.meta)
    assert list(np.concatenate([b.image_ids for b in serial])) == sorted(it.image_id for it in items)


def test_missing_image_is_reported(synthetic, tmp_path):
    images, ann = synthetic
    data = read_annotations(ann)
    data["images"][0]["file_name"] = "gone.jpg"
    with pytest.raises(InputError, match="1 image\\(s\\) listed in the annotation file are missing"):
        image_items(data, images)


def test_corrupt_image_names_the_file(synthetic, tmp_path):
    images, ann = synthetic
    data = read_annotations(ann)
    item = image_items(data, images)[0]
    bad_dir = tmp_path / "imgs"
    bad_dir.mkdir()
    for it in image_items(data, images):
        (bad_dir / it.path.split("/")[-1]).write_bytes(open(it.path, "rb").read())
    (bad_dir / item.path.split("/")[-1]).write_bytes(b"\xff\xd8\xff not really a jpeg")
    pre = Preprocessor(Preprocess(), 64, 64)
    with pytest.raises(InputError, match="cannot decode image|truncated JPEG"):
        list(iter_batches(image_items(data, bad_dir), pre, 2, workers=1))


@pytest.mark.parametrize("base", [".", "imgs", "imgs/", "ABS"])
def test_image_paths_are_pathlibs_joins(tmp_path, monkeypatch, base):
    """The string join of plain file names gives exactly pathlib's path (the input cache key and every error
    message carry it), and other names still go through pathlib."""
    from pathlib import Path
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "imgs" if base == "ABS" else Path(base)
    names = ["a.jpg", "c d.jpg", "..x.jpg", "sub/b.jpg", "./e.jpg", "sub//f.jpg"]
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    ann = {"images": [{"id": i, "file_name": n, "width": 1, "height": 1} for i, n in enumerate(names)]}
    assert [it.path for it in image_items(ann, root)] == [str(root / n) for n in names]


def test_box_only_reading_drops_only_polygons(tmp_path):
    """polygons=False: polygon segmentations read as [], everything else as json.load reads it (an RLE object,
    an empty list, text that looks like a polygon inside a string); a defect is reported at its place in the
    file as it is."""
    import json
    ann = {"info": {"note": 'copied "segmentation": [[1, 2]] here'},
           "images": [{"id": 1, "file_name": "a.jpg", "width": 4, "height": 4}],
           "categories": [{"id": 1, "name": "person"}],
           "annotations": [
               {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2], "area": 4, "iscrowd": 0,
                "segmentation": [[0.5, 1e-3, 2, -3.25E+2], [1, 2, 3, 4, 5, 6]]},
               {"id": 2, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2], "area": 4, "iscrowd": 1,
                "segmentation": {"counts": [1, 2, 3], "size": [4, 4]}},
               {"id": 3, "image_id": 1, "category_id": 1, "bbox": [1, 1, 1, 1], "area": 1, "iscrowd": 0,
                "segmentation": []},
               {"segmentation" : [ [ 1 , 2 ] ] , "id": 4, "image_id": 1, "category_id": 1, "bbox": [1, 1, 1, 1],
                "area": 1, "iscrowd": 0}]}
    path = tmp_path / "ann.json"
    for indent in (None, 2):
        path.write_text(json.dumps(ann, indent=indent))
        full, boxes = read_annotations(path), read_annotations(path, polygons=False)
        assert full == ann
        expected = json.loads(json.dumps(ann))
        expected["annotations"][0]["segmentation"] = []
        expected["annotations"][3]["segmentation"] = []
        assert boxes == expected
    path.write_text(json.dumps(ann)[:-40])
    with pytest.raises(InputError) as full_error:
        read_annotations(path)
    with pytest.raises(InputError) as box_error:
        read_annotations(path, polygons=False)
    assert str(box_error.value) == str(full_error.value) and "column" in str(box_error.value)


def test_a_passed_annotation_file_is_remembered_parsed_by_content_and_a_changed_byte_is_read_again(tmp_path):
    from common.engine_cache import EngineCache
    cache = EngineCache(tmp_path / "c")
    path = tmp_path / "ann.json"
    good = {"images": [{"id": 1, "file_name": "a.jpg", "width": 4, "height": 3}],
            "categories": [{"id": 1, "name": "person"}],
            "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2], "area": 4, "iscrowd": 0,
                             "segmentation": [[0, 0, 2, 0, 2, 2]]}]}
    path.write_text(json.dumps(good))
    assert read_annotations(path, remember=cache) == good
    boxes = json.loads(json.dumps(good))
    boxes["annotations"][0]["segmentation"] = []
    assert read_annotations(path, polygons=False, remember=cache) == boxes   # each reader remembers its own form
    entries = tmp_path / "c" / "coco-annotations"
    assert len(list(entries.iterdir())) == 2
    assert read_annotations(path, remember=cache) == good                    # remembered: the same bytes
    moved = json.loads(json.dumps(good))
    moved["annotations"][0]["bbox"] = [1, 0, 2, 2]                            # planted: one changed box
    path.write_text(json.dumps(moved))
    assert read_annotations(path, polygons=False, remember=cache)["annotations"][0]["bbox"] == [1, 0, 2, 2]
    bad = json.loads(json.dumps(good))
    bad["annotations"][0]["iscrowd"] = None                                   # planted: the defect the check exists for
    path.write_text(json.dumps(bad))
    for _ in range(2):                                                        # refused, and never remembered as passed
        with pytest.raises(InputError, match="iscrowd"):
            read_annotations(path, remember=cache)
    assert len(list(entries.iterdir())) == 3


def test_a_settled_annotation_file_is_remembered_by_its_stamps_and_a_same_size_change_is_read_again(
        tmp_path, monkeypatch):
    """EngineCache.parsed_file: a settled file has its sha256 remembered by its stamps, so the next read neither
    reads nor hashes it; a change of the same size with the modification time put back (ctime still moves) is
    parsed again, never served from the old entry."""
    import os

    import common.engine_cache
    from common.engine_cache import EngineCache
    monkeypatch.setattr(common.engine_cache, "_MEMO_SETTLED_NS", 0)  # settled at once (not 2 s after the write)
    cache = EngineCache(tmp_path / "c")
    path = tmp_path / "ann.json"
    ann = {"images": [{"id": 1, "file_name": "a.jpg", "width": 4, "height": 3}],
           "categories": [{"id": 1, "name": "person"}],
           "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2], "area": 4, "iscrowd": 0}]}
    path.write_text(json.dumps(ann))
    old = path.stat().st_mtime_ns - 3_600_000_000_000
    os.utime(path, ns=(old, old))
    assert read_annotations(path, polygons=False, remember=cache) == ann
    assert len(list((tmp_path / "c" / "sha256").iterdir())) == 1  # the sha256 remembered by the file's stamps
    assert read_annotations(path, polygons=False, remember=cache) == ann
    moved = json.loads(json.dumps(ann))
    moved["annotations"][0]["bbox"] = [1, 0, 2, 2]  # planted: the same size, another box
    path.write_text(json.dumps(moved))
    assert path.stat().st_size == len(json.dumps(ann))
    os.utime(path, ns=(old, old))
    time.sleep(0.01)  # a ctime of its own, after the one remembered
    assert read_annotations(path, polygons=False, remember=cache)["annotations"][0]["bbox"] == [1, 0, 2, 2]
