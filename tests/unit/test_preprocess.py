import numpy as np
import pytest

from common.data.preprocess import Preprocessor, boxes_to_input, boxes_to_original
from common.config.specs import Preprocess

MEAN, STD = (103.53, 116.28, 123.675), (57.375, 57.12, 58.395)
SIZES = [(480, 640), (640, 480), (333, 1000), (1000, 211), (320, 320), (97, 53)]


@pytest.mark.parametrize("resize,pad", [("letterbox", "bottom_right"), ("letterbox", "center"),
                                        ("stretch", "bottom_right")])
@pytest.mark.parametrize("h,w", SIZES)
def test_box_round_trip_and_content(resize, pad, h, w):
    """A filled box drawn in the image lands where the geometry says, and maps back to where it started."""
    pre = Preprocessor(Preprocess(resize=resize, pad=pad, mean=MEAN, std=STD), 320, 256)
    img = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = int(w * 0.3), int(h * 0.25), int(w * 0.7), int(h * 0.8)
    img[y1:y2, x1:x2] = 255
    out, meta = pre(img)
    assert out.shape == (3, 320, 256) and out.dtype == np.float32
    box = np.array([[x1, y1, x2, y2]], np.float64)
    in_box = boxes_to_input(box, meta)[0]
    back = boxes_to_original(in_box[None], meta)[0]
    np.testing.assert_allclose(back, box[0], atol=1e-6)
    # the bright region of channel 0 in the network input spans the mapped box (to within a resampled pixel)
    bright = out[0] > (128 - MEAN[0]) / STD[0]
    ys, xs = np.nonzero(bright)
    assert abs(xs.min() - in_box[0]) <= 1.5 and abs(xs.max() + 1 - in_box[2]) <= 1.5
    assert abs(ys.min() - in_box[1]) <= 1.5 and abs(ys.max() + 1 - in_box[3]) <= 1.5


def test_letterbox_padding_value_and_side():
    pre = Preprocessor(Preprocess(resize="letterbox", pad="bottom_right", pad_value=114, mean=MEAN, std=STD), 320, 320)
    img = np.full((100, 200, 3), 10, np.uint8)
    out, meta = pre(img)
    assert tuple(meta) == (1.6, 1.6, 0, 0, 200, 100)
    np.testing.assert_allclose(out[:, 200:, :], ((114 - np.array(MEAN)) / np.array(STD))[:, None, None]
                               * np.ones((1, 120, 320)), rtol=1e-6)
    np.testing.assert_allclose(out[:, :160, :], ((10 - np.array(MEAN)) / np.array(STD))[:, None, None]
                               * np.ones((1, 160, 320)), rtol=1e-5)


def test_rgb_order_swaps_channels():
    img = np.zeros((32, 32, 3), np.uint8)
    img[..., 0] = 200  # blue in OpenCV's BGR
    bgr, _ = Preprocessor(Preprocess(color="bgr"), 32, 32)(img)
    rgb, _ = Preprocessor(Preprocess(color="rgb"), 32, 32)(img)
    assert bgr[0].mean() == 200 and rgb[2].mean() == 200 and rgb[0].mean() == 0


def test_boxes_are_clipped_to_the_image():
    meta = np.array([0.5, 0.5, 0, 0, 100, 50], np.float64)
    out = boxes_to_original(np.array([[-10.0, -5.0, 80.0, 40.0]]), meta)
    np.testing.assert_allclose(out[0], [0, 0, 100, 50])


def _two_pass_reference(pre, img):
    """The preprocessing before the lookup tables: the full canvas padded, then per channel a float32 multiply and
    a float32 add (the numbers every recorded output and input cache were made with)."""
    import cv2
    img_h, img_w = img.shape[:2]
    new_w, new_h, ox, oy = pre.geometry(img_h, img_w)
    resized = img if (new_w, new_h) == (img_w, img_h) else cv2.resize(img, (new_w, new_h), interpolation=pre.interp)
    out = np.empty((3, pre.height, pre.width), np.float32)
    out[:] = pre.pad_norm[:, None, None]
    channels = cv2.split(resized)
    if pre.spec.color == "rgb":
        channels = channels[::-1]
    for c, channel in enumerate(channels):
        region = out[c, oy:oy + new_h, ox:ox + new_w]
        np.multiply(channel, pre.inv_std[c], out=region)
        region += pre.bias[c]
    return out


@pytest.mark.parametrize("resize,pad,color", [("letterbox", "bottom_right", "bgr"), ("letterbox", "center", "rgb"),
                                              ("stretch", "bottom_right", "rgb")])
@pytest.mark.parametrize("h,w", SIZES)
def test_bit_identical_to_the_two_pass_normalisation(resize, pad, color, h, w):
    """Every uint8 level of every channel, the padding on every side and a canvas that held other data before (a
    reused buffer): the same float32 bits as the two-pass arithmetic."""
    pre = Preprocessor(Preprocess(resize=resize, pad=pad, color=color, mean=(1.5, 77.25, 255.0),
                                  std=(0.3, 57.12, 3.0)), 96, 80)
    img = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), np.uint8)
    img[0, :3] = [[0, 0, 0], [255, 255, 255], [128, 1, 254]]
    canvas = np.full((3, 96, 80), np.nan, np.float32)
    out, _ = pre(img, canvas)
    assert out is canvas
    ref = _two_pass_reference(pre, img)
    assert out.view(np.uint32).tobytes() == ref.view(np.uint32).tobytes()


@pytest.mark.parametrize("resize,pad,color,pad_value", [("letterbox", "bottom_right", "bgr", 114.0),
                                                        ("letterbox", "center", "rgb", 114.5),
                                                        ("letterbox", "bottom_right", "rgb", -3.0),
                                                        ("stretch", "bottom_right", "rgb", 114.0)])
@pytest.mark.parametrize("h,w", SIZES)
def test_the_cached_canvas_normalises_to_the_same_bits(resize, pad, color, pad_value, h, w):
    """normalize(letterbox(img)), the input cache's path, gives the very bits of __call__(img), the uncached path:
    every uint8 level, margins on every side, a pad value that no uint8 holds, into a reused (dirty) buffer."""
    pre = Preprocessor(Preprocess(resize=resize, pad=pad, color=color, pad_value=pad_value, mean=(1.5, 77.25, 255.0),
                                  std=(0.3, 57.12, 3.0)), 96, 80)
    img = np.random.default_rng(h + w).integers(0, 256, (h, w, 3), np.uint8)
    img[0, :3] = [[0, 0, 0], [255, 255, 255], [128, 1, 254]]
    direct, meta = pre(img)
    canvas, canvas_meta = pre.letterbox(img)
    assert canvas.dtype == np.uint8 and canvas.shape == (3, 96, 80)
    np.testing.assert_array_equal(canvas_meta, meta)
    dirty = np.full((2, 3, 96, 80), np.nan, np.float32)
    out = pre.normalize(np.stack([canvas, canvas]), np.stack([meta, meta]), dirty)
    assert out is dirty
    for plane in out:
        assert plane.view(np.uint32).tobytes() == direct.view(np.uint32).tobytes()
