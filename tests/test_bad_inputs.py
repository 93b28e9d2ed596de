"""Each bad input a CI node can meet gives a SuiteError naming the file, never a traceback or a wrong AP."""
import json
import pickle

import cv2
import numpy as np
import pytest

from common.checkpoints import load_state_dict
from common.data import image_items, read_annotations, read_image, resolve_dataset
from common.errors import EXIT_BAD_INPUT, InputError
from synthetic_coco import make_synthetic_coco


@pytest.fixture
def coco(tmp_path):
    images_dir, ann = make_synthetic_coco(tmp_path / "coco", n_images=4, seed=1)
    return tmp_path / "coco", images_dir, ann


def test_synthetic_dataset_is_valid(coco):
    root, images_dir, ann = coco
    assert resolve_dataset(str(root), "instances_val2017.json") == (images_dir, ann)
    items = image_items(read_annotations(ann), images_dir)
    assert len(items) == 4 and read_image(items[0].path).shape == (items[0].height, items[0].width, 3)


def test_missing_images_dir_and_annotation(coco, tmp_path):
    root, images_dir, ann = coco
    with pytest.raises(InputError, match="annotation file not found") as ei:
        resolve_dataset(str(root), "instances_missing.json")
    assert "instances_missing.json" in str(ei.value) and ei.value.exit_code == EXIT_BAD_INPUT
    with pytest.raises(InputError, match="images directory not found"):
        resolve_dataset(str(root), "instances_val2017.json", str(tmp_path / "nope"))


@pytest.mark.parametrize("text,match", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "top level is not an object"),
    ('{"images": [], "categories": []}', "'annotations' missing"),
    ('{"images": [{"id": "x"}], "annotations": [], "categories": []}', r"images\[0\]"),
])
def test_malformed_annotation(tmp_path, text, match):
    ann = tmp_path / "a.json"
    ann.write_text(text)
    with pytest.raises(InputError, match=match) as ei:
        read_annotations(ann)
    assert str(ann) in str(ei.value)


def test_annotation_for_unknown_image(coco):
    _, _, ann = coco
    data = json.loads(ann.read_text())
    data["annotations"][0]["image_id"] = 999
    ann.write_text(json.dumps(data))
    with pytest.raises(InputError, match="image_id 999"):
        read_annotations(ann)


def test_listed_image_missing_on_disk(coco):
    _, images_dir, ann = coco
    (images_dir / "000000000002.jpg").unlink()
    with pytest.raises(InputError, match="1 image.*missing.*000000000002.jpg"):
        image_items(read_annotations(ann), images_dir)


def test_empty_dataset(tmp_path):
    ann = tmp_path / "a.json"
    ann.write_text('{"images": [], "annotations": [], "categories": []}')
    with pytest.raises(InputError, match="no images"):
        image_items(read_annotations(ann), tmp_path)


def test_corrupt_and_truncated_jpeg(coco):
    _, images_dir, _ = coco
    path = images_dir / "000000000001.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated JPEG") as ei:
        read_image(str(path))
    assert str(path) in str(ei.value)
    path.write_bytes(b"\xff\xd8garbage\xff\xd9")
    with pytest.raises(InputError, match="cannot decode"):
        read_image(str(path))
    path.write_bytes(b"")
    with pytest.raises(InputError, match="cannot decode"):
        read_image(str(path))


def test_grayscale_cmyk_and_png_named_jpg_decode_to_bgr(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 30, 3), np.uint8)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.jpg")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    Image.fromarray(rgb).save(tmp_path / "png.jpg", format="PNG")
    for name in ("gray.jpg", "cmyk.jpg", "png.jpg"):
        img = read_image(str(tmp_path / name))
        assert img.shape == (20, 30, 3) and img.dtype == np.uint8, name
    # PNG is lossless: the pixels must be exactly the RGB ones, in BGR order
    assert np.array_equal(read_image(str(tmp_path / "png.jpg")), rgb[..., ::-1])
    # CMYK converted back to colour stays close to the original (lossy JPEG + conversion)
    assert np.abs(read_image(str(tmp_path / "cmyk.jpg")).astype(int) - rgb[..., ::-1]).mean() < 20


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoint_pickle_needing_code_is_refused(tmp_path):
    import torch
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hook": _Evil()}, path)
    with pytest.raises(InputError, match="refused: the checkpoint is a pickle that needs arbitrary code") as ei:
        load_state_dict(path)
    assert str(path) in str(ei.value)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(InputError):
        load_state_dict(plain)


def test_checkpoint_truncated_and_good(tmp_path):
    import torch
    from safetensors.torch import save_file
    good = tmp_path / "good.pth"
    torch.save({"state_dict": {"w": torch.arange(1000.0)}}, good)
    assert torch.equal(load_state_dict(good)["w"], torch.arange(1000.0))
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(InputError, match="not a readable PyTorch checkpoint"):
        load_state_dict(cut)
    st = tmp_path / "w.safetensors"
    save_file({"w": torch.ones(100)}, st)
    st.write_bytes(st.read_bytes()[:-50])
    with pytest.raises(InputError, match="not a readable safetensors"):
        load_state_dict(st)
    with pytest.raises(InputError, match="checkpoint not found"):
        load_state_dict(tmp_path / "none.pth")
