"""Dense (anchor-free, point-prior) raw-head decoders, registered into common/decode/outputs.py's registry.

"rtmdet_raw": the head outputs of mmdet's RTMDetSepBNHead before any post-processing, one class-logit map
[B, C, H, W] and one distance map [B, 4, H, W] (left, top, right, bottom, already scaled to input pixels by the
stride) per stride. Decoding follows mmdet's test_cfg semantics: sigmoid scores, score threshold, top-k before
NMS, class-aware NMS, max detections per image. Defaults are mmdet's RTMDet test_cfg; the spec's output dict
overrides them (score_threshold, nms_pre, iou_threshold, max_per_img).
"""
from __future__ import annotations

import cv2
import numpy as np

from common.decode.registry import Detections, _output, register
from common.errors import InputError
from common.data.preprocess import boxes_to_original

# mmdet configs/rtmdet/rtmdet_l_8xb32-300e_coco.py model.test_cfg
RTMDET_TEST_CFG = {"score_threshold": 0.001, "nms_pre": 30000, "iou_threshold": 0.65, "max_per_img": 300}


def point_priors(height: int, width: int, stride: int) -> np.ndarray:
    """Prior centres (x, y) in input pixels for one feature map, row-major like the flattened head output
    (mmdet MlvlPointGenerator with offset 0, as RTMDet uses)."""
    ys, xs = np.meshgrid(np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32), indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1) * np.float32(stride)


def distance_to_box(points: np.ndarray, dist: np.ndarray, height: int, width: int) -> np.ndarray:
    """(left, top, right, bottom) distances from each point -> xyxy boxes clipped to the input size."""
    boxes = np.concatenate([points - dist[..., :2], points + dist[..., 2:]], axis=-1)
    np.clip(boxes[..., 0::2], 0, width, out=boxes[..., 0::2])
    np.clip(boxes[..., 1::2], 0, height, out=boxes[..., 1::2])
    return boxes


def _flatten_levels(outputs: dict, cfg: dict, input_hw: tuple[int, int]):
    cls_names, reg_names = cfg.get("cls"), cfg.get("reg")
    strides = cfg.get("strides", [8, 16, 32])
    if not cls_names or not reg_names or not (len(cls_names) == len(reg_names) == len(strides)):
        raise InputError("rtmdet_raw output spec needs equal-length lists 'cls', 'reg' and 'strides'; got "
                         f"cls={cls_names} reg={reg_names} strides={strides}")
    logits, boxes = [], []
    for cls_name, reg_name, stride in zip(cls_names, reg_names, strides):
        cls, reg = _output(outputs, cls_name), _output(outputs, reg_name)
        if cls.ndim != 4 or reg.ndim != 4 or reg.shape[1] != 4 or cls.shape[2:] != reg.shape[2:]:
            raise InputError(f"raw head outputs '{cls_name}' {cls.shape} / '{reg_name}' {reg.shape} must be "
                             "[B, C, H, W] and [B, 4, H, W] with the same H, W")
        b, c, h, w = cls.shape
        logits.append(cls.reshape(b, c, h * w).transpose(0, 2, 1))
        dist = reg.reshape(b, 4, h * w).transpose(0, 2, 1).astype(np.float32)
        boxes.append(distance_to_box(point_priors(h, w, int(stride))[None], dist, *input_hw))
    return np.concatenate(logits, axis=1), np.concatenate(boxes, axis=1)


@register("rtmdet_raw", keys=("cls", "reg", "strides", "nms_pre", "iou_threshold"))
def decode_rtmdet_raw(outputs: dict, meta: np.ndarray, cfg: dict) -> Detections:
    settings = {**RTMDET_TEST_CFG, **{k: cfg[k] for k in RTMDET_TEST_CFG if k in cfg}}
    input_hw = (int(cfg.get("input_height", 0) or 1 << 30), int(cfg.get("input_width", 0) or 1 << 30))
    logits, boxes = _flatten_levels(outputs, cfg, input_hw)
    scores = 1.0 / (1.0 + np.exp(-logits.astype(np.float32)))          # [B, N, C]
    batch, _, num_classes = scores.shape
    out_b, out_boxes, out_scores, out_labels = [], [], [], []
    for i in range(batch):                       # one vectorised pass per image, none per box
        flat = scores[i].ravel()
        keep = np.flatnonzero(flat > settings["score_threshold"])
        if keep.size > settings["nms_pre"]:
            keep = keep[np.argpartition(-flat[keep], settings["nms_pre"] - 1)[: settings["nms_pre"]]]
        if keep.size == 0:
            continue
        anchor, label = np.divmod(keep, num_classes)
        cand = boxes[i, anchor]
        xywh = np.concatenate([cand[:, :2], cand[:, 2:] - cand[:, :2]], axis=1)
        kept = cv2.dnn.NMSBoxesBatched(xywh.tolist(), flat[keep].tolist(), label.tolist(),
                                       float(settings["score_threshold"]), float(settings["iou_threshold"]))
        kept = np.asarray(kept, dtype=np.int64).reshape(-1)
        kept = kept[np.argsort(-flat[keep][kept], kind="stable")][: settings["max_per_img"]]
        mapped = boxes_to_original(cand[kept][None], meta[i:i + 1])[0]
        out_b.append(np.full(kept.size, i, dtype=np.int64))
        out_boxes.append(mapped)
        out_scores.append(flat[keep][kept])
        out_labels.append(label[kept])
    if not out_b:
        return (np.zeros(0, np.int64), np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    return (np.concatenate(out_b), np.concatenate(out_boxes), np.concatenate(out_scores),
            np.concatenate(out_labels))
