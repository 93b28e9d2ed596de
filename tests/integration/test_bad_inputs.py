"""Each bad input a CI node can meet gives a SuiteError naming the file, never a traceback or a wrong AP."""
import json
import pickle

import cv2
import numpy as np
import pytest

from common.export.checkpoints import load_state_dict
from common.data.coco import image_items, read_annotations, read_image, resolve_dataset
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


def _with_orientation(jpeg: bytes, orientation: int) -> bytes:
    """The JPEG with an EXIF APP1 segment holding only the Orientation tag (0x0112), little-endian TIFF."""
    ifd = (b"II*\x00" + (8).to_bytes(4, "little") + (1).to_bytes(2, "little")
           + (0x0112).to_bytes(2, "little") + (3).to_bytes(2, "little") + (1).to_bytes(4, "little")
           + orientation.to_bytes(2, "little") + b"\x00\x00" + (0).to_bytes(4, "little"))
    payload = b"Exif\x00\x00" + ifd
    return jpeg[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def test_exif_orientation_is_ignored(tmp_path):
    """COCO boxes refer to the stored pixels: an Orientation=6 (rotate 90) tag must not rotate the image."""
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 256, (20, 30, 3), np.uint8)
    ok, enc = cv2.imencode(".jpg", stored)
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_with_orientation(enc.tobytes(), 6))
    assert cv2.imread(str(path), cv2.IMREAD_COLOR).shape == (30, 20, 3), "the planted tag must be one OpenCV applies"
    assert read_image(str(path)).shape == (20, 30, 3)


def test_bytes_after_the_end_of_image_are_accepted(tmp_path):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (24, 32, 3), np.uint8)
    ok, enc = cv2.imencode(".jpg", img)
    path = tmp_path / "trailer.jpg"
    for trailer in (b"x" * 100, b"\0" * 4096, b"camera trailer without an end marker" * 10):
        path.write_bytes(enc.tobytes() + trailer)
        assert read_image(str(path)).shape == (24, 32, 3)
    # an EXIF thumbnail has its own end marker, in the header: a file cut in its scan data is still truncated
    data = _with_orientation(enc.tobytes(), 1)
    thumb = b"\xff\xd8\xff\xd9"
    data = data[:2] + b"\xff\xe2" + (len(thumb) + 2).to_bytes(2, "big") + thumb + data[2:]
    path.write_bytes(data[: len(data) - 40])
    with pytest.raises(InputError, match="truncated JPEG"):
        read_image(str(path))


def _coco_with(tmp_path, change):
    images_dir, ann = make_synthetic_coco(tmp_path / "coco", n_images=3, seed=2)
    data = json.loads(ann.read_text())
    change(data)
    ann.write_text(json.dumps(data))
    return ann


@pytest.mark.parametrize("change,field", [
    (lambda d: d["images"].append(dict(d["images"][0])), r"images\[3\]: 'id' 1 is repeated"),
    (lambda d: d["annotations"][1].pop("id"), r"annotations\[1\] has no integer 'id'"),
    (lambda d: d["annotations"][1].update(id=d["annotations"][0]["id"]), r"annotations\[1\]: 'id' 1 is repeated"),
    (lambda d: [a.pop("iscrowd") for a in d["annotations"]], r"annotations\[0\]: 'iscrowd'"),
    (lambda d: [a.pop("area") for a in d["annotations"]], r"annotations\[0\]: 'area'"),
    (lambda d: d["annotations"][0].update(bbox=[None, "x", 10, 10]), r"annotations\[0\]: 'bbox'.*finite numbers"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, -3, 4]), r"annotations\[0\]: 'bbox'.*negative"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, float("nan"), 4]), r"annotations\[0\]: 'bbox'"),
    (lambda d: d["annotations"][0].update(category_id=999), r"annotations\[0\]: 'category_id' 999"),
    (lambda d: d["categories"].append(dict(d["categories"][0])), r"categories\[80\]: 'id' 1 is repeated"),
    (lambda d: d["images"][0].update(width=0), r"images\[0\]: 'width'/'height' must be positive"),
])
def test_incomplete_or_inconsistent_annotations_are_refused(tmp_path, change, field):
    ann = _coco_with(tmp_path, change)
    with pytest.raises(InputError, match=field) as ei:
        read_annotations(ann)
    assert str(ann) in str(ei.value) and ei.value.exit_code == EXIT_BAD_INPUT


def test_annotation_faults_stop_the_run_before_inference(tmp_path):
    """The CLI refuses a bad annotation file before the model is even looked at (the ONNX here does not
    exist: had the run got that far, the error would be about it)."""
    from helpers import run_script
    ann = _coco_with(tmp_path, lambda d: d["annotations"][0].pop("id"))
    res = run_script("models/rtmdet/scripts/infer_rtmdet_fp32_accuracy.sh", "--onnx", tmp_path / "none.onnx",
                     "--images-dir", ann.parent.parent / "images" / "val2017", "--ann", ann, "--results-dir",
                     tmp_path / "r", "--no-progress")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert str(ann) in res.stderr and "'id'" in res.stderr and "none.onnx" not in res.stderr


def test_categories_not_in_the_file_name_it(tmp_path):
    from common.evaluate.metrics import CocoEvaluator
    from common.config.specs import COCO80_TO_91
    ann = _coco_with(tmp_path, lambda d: d.update(categories=[c for c in d["categories"] if c["id"] != 1]
                                                  ) or [a.update(category_id=3) for a in d["annotations"]])
    with pytest.raises(InputError, match=r"categories.*\[1\].*not in the annotation file") as ei:
        CocoEvaluator(read_annotations(ann), COCO80_TO_91, categories=[1], source=ann)
    assert str(ann) in str(ei.value)


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
