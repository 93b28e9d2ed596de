"""Image -> network input, and the geometry to map network boxes back to the original image.

Letterbox follows the mmcv/mmdet convention: scale = min(H/h, W/w), new size = int(side * scale + 0.5),
per-axis scale factors = new size / old size; boxes are mapped back by subtracting the pad offset and
dividing by those factors. Padding is applied in pixel space (before normalisation), as in mmdet's Pad.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Preprocess:
    resize: str = "letterbox"  # letterbox (keep ratio) | stretch (plain resize)
    pad: str = "bottom_right"  # where letterbox padding goes: bottom_right | center
    pad_value: float = 114.0
    color: str = "bgr"  # channel order the network expects: bgr | rgb
    mean: tuple = (0.0, 0.0, 0.0)  # in the network's channel order, 0-255 units
    std: tuple = (1.0, 1.0, 1.0)
    interpolation: str = "linear"  # linear | nearest | cubic | area

    def key(self, height: int, width: int) -> str:
        """Everything that changes the network's input at this size: the key of cached inputs, calibration
        sets and recordings."""
        return repr(
            (self.resize, self.pad, self.pad_value, self.color, self.mean, self.std, self.interpolation, height, width)
        )


_INTERP = {"linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST, "cubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA}

# Columns of the per-image geometry row returned with every preprocessed image.
META_FIELDS = ("scale_x", "scale_y", "pad_x", "pad_y", "width", "height")


class Preprocessor:
    def __init__(self, spec: Preprocess, height: int, width: int):
        self.spec, self.height, self.width = spec, height, width
        self.interp = _INTERP[spec.interpolation]
        mean = np.asarray(spec.mean, np.float32)
        self.inv_std = (1.0 / np.asarray(spec.std, np.float64)).astype(np.float32)
        self.bias = (-mean * self.inv_std).astype(np.float32)
        self.pad_norm = ((spec.pad_value - mean) * self.inv_std).astype(np.float32)
        # Normalising a uint8 channel is a function of 256 values: a table made with the very same float32
        # operations (multiply, then add) gives bit-identical inputs in one pass (cv2.LUT) instead of two.
        # The calls are those of the two-pass code, out= included, so the arithmetic's dtype is the same too.
        levels = np.arange(256, dtype=np.uint8)
        self.luts = []
        for c in range(len(mean)):
            table = np.empty(256, np.float32)
            np.multiply(levels, self.inv_std[c], out=table)
            table += self.bias[c]
            self.luts.append(table)

    def geometry(self, img_h: int, img_w: int):
        """(new_w, new_h, offset_x, offset_y) of the resized image inside the input canvas."""
        if self.spec.resize == "stretch":
            return self.width, self.height, 0, 0
        scale = min(self.height / img_h, self.width / img_w)
        new_w, new_h = int(img_w * scale + 0.5), int(img_h * scale + 0.5)
        if self.spec.pad == "center":
            return new_w, new_h, (self.width - new_w) // 2, (self.height - new_h) // 2
        return new_w, new_h, 0, 0

    def _pad_margins(self, out, new_w, new_h, ox, oy):
        """Only the canvas around the image: its own area is written next, and filling it first costs a pass."""
        for plane, value in zip(out, self.pad_norm):
            plane[:oy] = value
            plane[oy + new_h :] = value
            plane[oy : oy + new_h, :ox] = value
            plane[oy : oy + new_h, ox + new_w :] = value

    def _resized(self, img: np.ndarray):
        """(the image resized into the input, (new_w, new_h, ox, oy)): the one step __call__ and letterbox share."""
        new_w, new_h, ox, oy = self.geometry(*img.shape[:2])
        if (new_w, new_h) != img.shape[1::-1]:
            img = cv2.resize(img, (new_w, new_h), interpolation=self.interp)
        return img, (new_w, new_h, ox, oy)

    def __call__(self, img: np.ndarray, out: np.ndarray | None = None):
        """img: HxWx3 uint8 in BGR (OpenCV's order). Returns (CHW float32 input, meta row)."""
        img_h, img_w = img.shape[:2]
        resized, (new_w, new_h, ox, oy) = self._resized(img)
        if out is None:
            out = np.empty((3, self.height, self.width), np.float32)
        if (new_w, new_h) != (self.width, self.height):
            self._pad_margins(out, new_w, new_h, ox, oy)
        # Channel by channel straight into the CHW canvas, with no HWC float copy and no transpose (the costliest
        # part of preprocessing on a small input).
        channels = cv2.split(resized)
        if self.spec.color == "rgb":
            channels = channels[::-1]
        for c, channel in enumerate(channels):
            region = out[c, oy : oy + new_h, ox : ox + new_w]
            if channel.dtype == np.uint8:
                written = cv2.LUT(channel, self.luts[c], dst=region)
                if written.ctypes.data != region.ctypes.data:  # OpenCV chose a new array over the view
                    region[...] = written
            else:
                np.multiply(channel, self.inv_std[c], out=region)
                region += self.bias[c]
        meta = np.array([new_w / img_w, new_h / img_h, ox, oy, img_w, img_h], np.float64)
        return out, meta

    def letterbox(self, img: np.ndarray, out: np.ndarray | None = None):
        """img: HxWx3 uint8 BGR -> (CHW uint8 canvas in the network's channel order, meta row): what the input
        cache stores, a quarter of the float32 input's bytes. normalize() of it gives exactly __call__'s input.
        The margins hold the pad value rounded into uint8; normalize() writes the exact pad value there."""
        img_h, img_w = img.shape[:2]
        resized, (new_w, new_h, ox, oy) = self._resized(img)
        if out is None:
            out = np.empty((3, self.height, self.width), np.uint8)
        if (new_w, new_h) != (self.width, self.height):
            pad = int(min(255.0, max(0.0, round(self.spec.pad_value))))
            out[:, :oy] = pad
            out[:, oy + new_h :] = pad
            out[:, oy : oy + new_h, :ox] = pad
            out[:, oy : oy + new_h, ox + new_w :] = pad
        channels = cv2.split(resized)
        if self.spec.color == "rgb":
            channels = channels[::-1]
        for c, channel in enumerate(channels):
            out[c, oy : oy + new_h, ox : ox + new_w] = channel
        meta = np.array([new_w / img_w, new_h / img_h, ox, oy, img_w, img_h], np.float64)
        return out, meta

    def normalize(self, canvas: np.ndarray, meta: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """letterbox()'s uint8 canvases [..., 3, H, W] with their meta rows [..., 6] -> the float32 inputs,
        bit-identical to __call__'s: the same lookup tables over every plane, then the exact pad value in the
        margins (which the uint8 canvas can only hold rounded)."""
        canvas = np.asarray(canvas)
        planes = canvas.reshape(-1, 3, self.height, self.width)
        rows = np.asarray(meta, np.float64).reshape(-1, 6)
        if out is None:
            out = np.empty(canvas.shape, np.float32)
        dst = out.reshape(planes.shape)
        for i in range(len(planes)):
            for c in range(3):
                written = cv2.LUT(planes[i, c], self.luts[c], dst=dst[i, c])
                if written.ctypes.data != dst[i, c].ctypes.data:  # OpenCV chose a new array over the view
                    dst[i, c] = written
            if self.spec.resize != "stretch":
                scale_x, scale_y, ox, oy, img_w, img_h = rows[i]
                new_w, new_h = int(round(scale_x * img_w)), int(round(scale_y * img_h))
                if (new_w, new_h) != (self.width, self.height):
                    self._pad_margins(dst[i], new_w, new_h, int(ox), int(oy))
        return out


def boxes_to_original(boxes: np.ndarray, meta: np.ndarray, clip: bool = True) -> np.ndarray:
    """Map xyxy boxes in input pixels back to original image pixels, clipped to the image unless clip=False
    (DETR lines' reference post-processors do not clip: common/decode/detr.py).

    boxes: [..., N, 4]; meta: [..., 6] rows as produced by Preprocessor (leading dims broadcast).
    """
    meta = np.asarray(meta, np.float64)[..., None, :]
    out = np.empty(boxes.shape, np.float64)
    out[..., 0::2] = (boxes[..., 0::2] - meta[..., 2:3]) / meta[..., 0:1]
    out[..., 1::2] = (boxes[..., 1::2] - meta[..., 3:4]) / meta[..., 1:2]
    if clip:
        np.clip(out[..., 0::2], 0, meta[..., 4:5], out=out[..., 0::2])
        np.clip(out[..., 1::2], 0, meta[..., 5:6], out=out[..., 1::2])
    return out


def boxes_to_input(boxes: np.ndarray, meta: np.ndarray) -> np.ndarray:
    """Inverse of boxes_to_original (without clipping): original pixels -> input pixels."""
    meta = np.asarray(meta, np.float64)[..., None, :]
    out = np.empty(boxes.shape, np.float64)
    out[..., 0::2] = boxes[..., 0::2] * meta[..., 0:1] + meta[..., 2:3]
    out[..., 1::2] = boxes[..., 1::2] * meta[..., 1:2] + meta[..., 3:4]
    return out
