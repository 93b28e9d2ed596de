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
