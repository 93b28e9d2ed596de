"""Set-prediction (DETR-family) output conventions, registered into common/decode/outputs.py's registry.

A DETR-style detector predicts a fixed set of queries; its detections need no NMS. Each convention here maps one
output layout to flat detections in original image pixels, vectorised over the whole batch:

- "detr": class logits [B, Q, C] and boxes [B, Q, 4] as normalised (cx, cy, w, h) of the network input canvas
  (transformers RT-DETR / RT-DETRv2, the authors' RT-DETR before its post-processor). Scores are sigmoid(logits)
  (or softmax without the last "no object" class for the original DETR); the top-k (query, class) pairs over
  all Q x C are kept, one query may give several classes, as RT-DETR's own post-processor does.
- "boxes_labels_scores": boxes [B, N, 4] (xyxy in input pixels, or normalised / cxcywh when declared),
  labels [B, N], scores [B, N]: graphs that already contain the post-processing.
- "ultralytics": one tensor `output0`, normalised (cx, cy, w, h) of the input canvas first, in one of two layouts
  that the last dimension tells apart (`layout` overrides):
  * [B, N, 6] = (cx, cy, w, h, score, class) (Ultralytics >= 8.4: RTDETRDecoder.postprocess already took the top N
    (query, class) pairs over all queries x classes, scores sigmoid probabilities, best first);
  * [B, N, 4 + C] per-class probabilities (older exports): one detection per query, its best class (their
    predictor's `score.max(-1)`).
  A 2-class model of the old layout is also 6 wide: declare `layout: per_class` then.
- "paddle_rows": rows (class, score, x1, y1, x2, y2), either [B, N, 6] or the PaddleDetection layout: all images'
  rows stacked [sum(N_i), 6] with a count output [B] (bbox_num, required then: `count`). Boxes are in the pixel
  space that the graph's im_shape / scale_factor inputs define; the spec feeds im_shape = input size and
  scale_factor = 1, which puts them in input pixels, and the suite's own geometry maps them back (`boxes_in:
  input`, the default). `boxes_in: original` takes them as already in original image pixels. Rows with class < 0
  are padding. Without `rows`, the one output shaped [..., 6] is taken (Paddle names outputs after internal
  tensors).

Every convention drops detections at or below `score_threshold` (a floor: keeping all 300 queries of every image
makes prediction files of gigabytes and adds nothing to AP) and keeps at most `max_per_img` per image.

Boxes are not clipped to the image: transformers' post_process_object_detection, the authors' RTDETRPostProcessor,
Ultralytics' predictor and validator and PaddleDetection's DETRPostProcess all leave them as predicted, and the
published APs come from those boxes. `clip_boxes: true` clips them where a user wants it.

Each convention whose scores are probabilities registers a score check (common/decode/outputs.py, SCORE_CHECKS): an
accuracy run with any score outside [0, 1] fails with exit 1 and the reason, instead of scoring garbage.
"""

from __future__ import annotations

import numpy as np

from common.data.preprocess import boxes_to_original
from common.decode.registry import CLASS_FAULT, Detections, _output, out_of_unit_range, register, register_score_check
from common.errors import ConfigError, InputError

DETR_DEFAULTS = {"score_threshold": 0.01, "max_per_img": 300}


def _settings(cfg: dict) -> tuple[float, int]:
    floor = float(cfg.get("score_threshold", DETR_DEFAULTS["score_threshold"]))
    keep = int(cfg.get("max_per_img", DETR_DEFAULTS["max_per_img"]))
    if keep < 1:
        raise ConfigError(f"output.max_per_img must be >= 1, got {keep}")
    return floor, keep


def _input_size(cfg: dict) -> np.ndarray:
    """(width, height, width, height) of the network input, for boxes given as fractions of it."""
    w, h = cfg.get("input_width"), cfg.get("input_height")
    if not w or not h:
        raise ConfigError("normalised boxes need output.input_width / input_height (the network input size)")
    return np.array([w, h, w, h], np.float32)


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    half = boxes[..., 2:] * 0.5
    return np.concatenate([boxes[..., :2] - half, boxes[..., :2] + half], axis=-1)


def _to_input_pixels(boxes: np.ndarray, cfg: dict, fmt: str, normalized: bool) -> np.ndarray:
    boxes = boxes.astype(np.float32, copy=False)
    if fmt == "cxcywh":
        boxes = cxcywh_to_xyxy(boxes)
    elif fmt != "xyxy":
        raise ConfigError(f"output.box_format must be xyxy or cxcywh, got {fmt!r}")
    return boxes * _input_size(cfg) if normalized else boxes


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    return 0.5 * (np.tanh(0.5 * x) + 1.0)  # = 1 / (1 + exp(-x)) without exp overflow warnings


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices [B, k] of the k largest scores of each row of [B, M], best first (ties: lower index first)."""
    k = min(k, scores.shape[1])
    part = (
        np.argpartition(-scores, k - 1, axis=1)[:, :k]
        if k < scores.shape[1]
        else np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    )
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def _clip(cfg: dict) -> bool:
    clip = cfg.get("clip_boxes", False)
    if not isinstance(clip, bool):
        raise ConfigError(f"output.clip_boxes must be true or false, got {clip!r}")
    return clip


def _select(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    meta: np.ndarray,
    floor: float,
    keep: int,
    clip: bool,
    boxes_in_original: bool = False,
) -> Detections:
    """Per image: the `keep` best detections above the floor, mapped to original pixels; flat arrays."""
    if scores.shape[1] > keep:
        idx = _top_k(scores, keep)
        boxes = np.take_along_axis(boxes, idx[..., None], axis=1)
        scores, labels = np.take_along_axis(scores, idx, axis=1), np.take_along_axis(labels, idx, axis=1)
    batch_index, det_index = np.nonzero(scores > floor)
    if boxes_in_original:
        mapped = np.asarray(boxes, np.float64)[batch_index, det_index]
        if clip:
            mapped = np.clip(mapped, 0, np.asarray(meta, np.float64)[batch_index][:, [4, 5, 4, 5]])
    else:
        mapped = boxes_to_original(boxes, meta, clip=clip)[batch_index, det_index]
    return (
        batch_index.astype(np.int64),
        mapped,
        scores[batch_index, det_index].astype(np.float32),
        labels[batch_index, det_index].astype(np.int64),
    )


def _check(arr: np.ndarray, ndim: int, last: int | None, what: str):
    if arr.ndim != ndim or (last is not None and arr.shape[-1] != last):
        raise InputError(f"{what}; got shape {arr.shape}")


@register("detr", keys=("logits", "boxes", "activation", "box_format", "normalized", "clip_boxes"))
def decode_detr(outputs: dict, meta: np.ndarray, cfg: dict) -> Detections:
    logits = _output(outputs, cfg.get("logits", "logits"))
    boxes = _output(outputs, cfg.get("boxes", "pred_boxes"))
    _check(logits, 3, None, "detr logits must be [B, Q, C]")
    _check(boxes, 3, 4, "detr boxes must be [B, Q, 4]")
    if boxes.shape[:2] != logits.shape[:2]:
        raise InputError(f"detr logits {logits.shape} and boxes {boxes.shape} disagree on [B, Q]")
    activation = cfg.get("activation", "sigmoid")
    if activation == "sigmoid":
        probs = sigmoid(logits)
    elif activation == "softmax":  # original DETR: the last class is "no object"
        z = logits.astype(np.float32) - logits.max(axis=-1, keepdims=True)
        probs = np.exp(z)
        probs = (probs / probs.sum(axis=-1, keepdims=True))[..., :-1]
    elif activation == "none":
        probs = logits.astype(np.float32, copy=False)
    else:
        raise ConfigError(f"output.activation must be sigmoid, softmax or none, got {activation!r}")
    floor, keep = _settings(cfg)
    b, q, c = probs.shape
    flat = probs.reshape(b, q * c)
    idx = _top_k(flat, min(keep, q * c))
    query, label = np.divmod(idx, c)
    xyxy = _to_input_pixels(boxes, cfg, cfg.get("box_format", "cxcywh"), bool(cfg.get("normalized", True)))
    picked = np.take_along_axis(xyxy, query[..., None], axis=1)
    return _select(picked, np.take_along_axis(flat, idx, axis=1), label, meta, floor, keep, _clip(cfg))


@register_score_check("detr")
def _detr_scores(outputs: dict, cfg: dict) -> dict:
    """Only `activation: none` takes the logits output as probabilities; sigmoid / softmax always give them."""
    if cfg.get("activation", "sigmoid") != "none":
        return {}
    name = cfg.get("logits", "logits")
    return {name: out_of_unit_range(_output(outputs, name))}


@register("boxes_labels_scores", keys=("boxes", "labels", "scores", "box_format", "normalized", "clip_boxes"))
def decode_boxes_labels_scores(outputs: dict, meta: np.ndarray, cfg: dict) -> Detections:
    boxes = _output(outputs, cfg.get("boxes", "boxes"))
    labels = _output(outputs, cfg.get("labels", "labels"))
    scores = _output(outputs, cfg.get("scores", "scores"))
    _check(boxes, 3, 4, "boxes must be [B, N, 4]")
    if labels.shape != boxes.shape[:2] or scores.shape != boxes.shape[:2]:
        raise InputError(f"labels {labels.shape} and scores {scores.shape} must be [B, N] like boxes {boxes.shape}")
    floor, keep = _settings(cfg)
    xyxy = _to_input_pixels(boxes, cfg, cfg.get("box_format", "xyxy"), bool(cfg.get("normalized", False)))
    return _select(xyxy, scores.astype(np.float32), labels.astype(np.int64), meta, floor, keep, _clip(cfg))


@register_score_check("boxes_labels_scores")
def _bls_scores(outputs: dict, cfg: dict) -> dict:
    name = cfg.get("scores", "scores")
    return {name: out_of_unit_range(_output(outputs, name))}


def _ultralytics_layout(preds: np.ndarray, cfg: dict) -> str:
    """ "topk" for [B, N, 6] (cx, cy, w, h, score, class), "per_class" for [B, N, 4 + C]."""
    layout = cfg.get("layout", "auto")
    if layout not in ("auto", "topk", "per_class"):
        raise ConfigError(f"output.layout must be auto, topk or per_class, got {layout!r}")
    if preds.ndim != 3 or preds.shape[-1] < 5 or (layout == "topk" and preds.shape[-1] != 6):
        raise InputError(
            f"ultralytics output must be [B, N, 6] (cx, cy, w, h, score, class) or [B, N, 4 + C] "
            f"(per-class scores); got {preds.shape}"
        )
    if layout == "auto":
        return "topk" if preds.shape[-1] == 6 else "per_class"
    return layout


@register("ultralytics", keys=("output", "box_format", "normalized", "layout", "clip_boxes"))
def decode_ultralytics(outputs: dict, meta: np.ndarray, cfg: dict) -> Detections:
    preds = _output(outputs, cfg.get("output", "output0"))
    layout = _ultralytics_layout(preds, cfg)
    floor, keep = _settings(cfg)
    if layout == "topk":
        # a class that is no class index (e.g. a score of an old 4 + 2 layout) fails the run through the score
        # check; its row is never a detection
        classes = preds[..., 5].astype(np.float64)
        valid = np.isfinite(classes) & (classes >= 0)
        labels = np.rint(np.where(valid, classes, 0)).astype(np.int64)
        scores = np.where(valid, preds[..., 4], -np.inf).astype(np.float32)
    else:
        cls = preds[..., 4:].astype(np.float32, copy=False)
        labels = cls.argmax(axis=-1)
        scores = np.take_along_axis(cls, labels[..., None], axis=-1)[..., 0]
    xyxy = _to_input_pixels(preds[..., :4], cfg, cfg.get("box_format", "cxcywh"), bool(cfg.get("normalized", True)))
    return _select(xyxy, scores, labels, meta, floor, keep, _clip(cfg))


@register_score_check("ultralytics")
def _ultralytics_scores(outputs: dict, cfg: dict) -> dict:
    name = cfg.get("output", "output0")
    preds = _output(outputs, name)
    if _ultralytics_layout(preds, cfg) == "per_class":
        return {name: out_of_unit_range(preds[..., 4:])}
    classes = preds[..., 5]
    # the class column must hold class indices: anything else means the layout is not (.., score, class)
    not_index = np.isfinite(classes) & ((classes < 0) | (np.abs(classes - np.rint(classes)) > 1e-3))
    return {name: out_of_unit_range(preds[..., 4]), name + CLASS_FAULT: int(np.count_nonzero(not_index))}


@register("paddle_rows", keys=("rows", "count", "boxes_in", "clip_boxes"))
def decode_paddle_rows(outputs: dict, meta: np.ndarray, cfg: dict) -> Detections:
    count_name = cfg.get("count")
    if cfg.get("rows"):
        rows = _output(outputs, cfg["rows"])
    else:  # Paddle exports name outputs after internal tensors: take the one of rows
        named = [k for k, v in outputs.items() if k != count_name and v.ndim in (2, 3) and v.shape[-1] == 6]
        if len(named) != 1:
            raise InputError(
                f"cannot tell which output holds the rows (class, score, x1, y1, x2, y2) among "
                f"{ {k: v.shape for k, v in outputs.items()} }; name it in output.rows"
            )
        rows = outputs[named[0]]
    batch = len(meta)
    if rows.ndim == 2:
        _check(rows, 2, 6, "paddle rows must be [sum(N), 6] or [B, N, 6]")
        if not count_name:
            raise ConfigError(
                "stacked paddle rows [sum(N), 6] need the per-image count output: set output.count (e.g. bbox_num)"
            )
        # a static-batch engine may have run padded copies of the last image: their counts and rows come last
        counts = _output(outputs, count_name).astype(np.int64).reshape(-1)[:batch]
        if counts.shape[0] != batch or counts.sum() > rows.shape[0] or (counts < 0).any():
            raise InputError(
                f"'{count_name}' {counts.tolist()[:8]} does not split {rows.shape[0]} rows into {batch} images"
            )
        rows = rows[: counts.sum()]
        if batch and (counts == counts[0]).all():
            rows = rows.reshape(batch, int(counts[0]), 6)
        else:  # ragged: pad each image's rows to the longest with class -1
            width = int(counts.max()) if batch else 0
            padded = np.full((batch, width, 6), -1, np.float32)
            image = np.repeat(np.arange(batch), counts)
            slot = np.arange(rows.shape[0]) - np.repeat(np.cumsum(counts) - counts, counts)
            padded[image, slot] = rows
            rows = padded
    _check(rows, 3, 6, "paddle rows must be [sum(N), 6] or [B, N, 6]")
    labels = rows[..., 0]
    scores = np.where(labels >= 0, rows[..., 1], -np.inf).astype(np.float32)
    floor, keep = _settings(cfg)
    where = cfg.get("boxes_in", "input")
    if where not in ("input", "original"):
        raise ConfigError(f"output.boxes_in must be input or original, got {where!r}")
    return _select(
        rows[..., 2:6].astype(np.float32),
        scores,
        np.rint(labels).astype(np.int64),
        meta,
        floor,
        keep,
        _clip(cfg),
        boxes_in_original=where == "original",
    )


@register_score_check("paddle_rows")
def _paddle_scores(outputs: dict, cfg: dict) -> dict:
    """Scores of the real rows (class >= 0); padding rows may hold anything."""
    named = (
        [cfg["rows"]]
        if cfg.get("rows")
        else [k for k, v in outputs.items() if k != cfg.get("count") and v.ndim in (2, 3) and v.shape[-1] == 6]
    )
    if len(named) != 1:
        return {}  # the decoder itself refuses this with the reason
    rows = _output(outputs, named[0])
    return {named[0]: out_of_unit_range(rows[..., 1][rows[..., 0] >= 0])}
