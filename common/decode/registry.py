"""The decoder registry and what every decoder shares (common/decode/outputs.py is the entry point).

A decoder is chosen by the `output.convention` a spec declares, never guessed from file names. Every decoder
takes the runner's outputs for one batch and the batch's geometry rows and returns flat arrays
(batch_index [M], boxes xyxy [M, 4] in original pixels, scores [M], model labels [M]); no per-box Python loops.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from common.data.preprocess import boxes_to_original
from common.errors import ConfigError, InputError

Detections = tuple  # (batch_index, boxes, scores, labels)
DECODERS: dict[str, Callable] = {}
# convention -> fn(outputs, cfg) -> {output name: number of score values outside [0, 1]}, for the conventions
# whose scores are probabilities: logits or class indices in a score slot must fail the run, not become a low AP
SCORE_CHECKS: dict[str, Callable] = {}
# the keys a spec's output section may hold for each convention (a misspelt key is an error, never a default)
OUTPUT_KEYS: dict[str, frozenset] = {}
COMMON_KEYS = ("convention", "score_threshold", "max_per_img", "input_height", "input_width")


def register(name: str, keys=()):
    """Register a decoder for `output.convention: name`; `keys`: the output-section keys it reads."""

    def deco(fn):
        DECODERS[name] = fn
        OUTPUT_KEYS[name] = frozenset(COMMON_KEYS) | frozenset(keys)
        return fn

    return deco


def register_score_check(name: str):
    def deco(fn):
        SCORE_CHECKS[name] = fn
        return fn

    return deco


def out_of_unit_range(values: np.ndarray) -> int:
    """How many values lie outside [0, 1] (NaN is not counted here: nonfinite_counts() counts it)."""
    values = np.asarray(values)
    return int(np.count_nonzero((values < 0) | (values > 1)))


def get_decoder(output_cfg: dict) -> Callable:
    """The decoder of a convention (import it from common.decode.outputs, which registers every convention)."""
    name = output_cfg.get("convention")
    if name not in DECODERS:
        raise ConfigError(f"unknown output convention {name!r}; known: {', '.join(sorted(DECODERS))}")
    return DECODERS[name]


def _output(outputs: dict, name: str) -> np.ndarray:
    if name not in outputs:
        raise InputError(
            f"the model has no output '{name}' (it has: {', '.join(outputs)}); check the spec's output names"
        )
    return outputs[name]


def _flatten(mask: np.ndarray, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, meta: np.ndarray):
    batch_index, det_index = np.nonzero(mask)
    mapped = boxes_to_original(boxes, meta)[batch_index, det_index]
    return batch_index, mapped, scores[batch_index, det_index], labels[batch_index, det_index]


@register("end2end", keys=("dets", "labels"))
def decode_end2end(outputs: dict, meta: np.ndarray, cfg: dict) -> Detections:
    """Detections already made inside the graph (e.g. mmdeploy end2end): dets [B, N, 5] rows of
    (x1, y1, x2, y2, score) in input pixels, labels [B, N]. Rows at or below the score floor are dropped,
    which also drops the zero-score rows some exports pad with."""
    dets = _output(outputs, cfg.get("dets", "dets"))
    labels = _output(outputs, cfg.get("labels", "labels"))
    if dets.ndim != 3 or dets.shape[-1] != 5 or labels.shape != dets.shape[:2]:
        raise InputError(
            f"end2end outputs must be dets [B, N, 5] and labels [B, N]; got {dets.shape} and {labels.shape}"
        )
    scores = dets[..., 4]
    mask = scores > float(cfg.get("score_threshold", 0.0))
    return _flatten(mask, dets[..., :4], scores, labels.astype(np.int64), meta)


@register_score_check("end2end")
def _end2end_scores(outputs: dict, cfg: dict) -> dict:
    name = cfg.get("dets", "dets")
    return {name: out_of_unit_range(_output(outputs, name)[..., 4])}


# Keys of the fault counts an accuracy run keeps (and its resume state stores): a plain output name counts NaN/Inf
# values (the original form), "<name>" + SCORE_FAULT counts scores outside [0, 1], "<name>" + CLASS_FAULT class
# values that are no class index (a score check returns that key itself).
SCORE_FAULT = "#scores_outside_0_1"
CLASS_FAULT = "#class_not_an_index"


def output_faults(outputs: dict, cfg: dict) -> dict:
    """{key: count} of what makes a batch's outputs garbage: NaN/Inf values, and scores outside [0, 1] where the
    convention's scores are probabilities. Any non-zero count fails the accuracy run (fault_reasons)."""
    counts = nonfinite_counts(outputs)
    check = SCORE_CHECKS.get(str(cfg.get("convention")))
    if check is not None:
        for name, n in check(outputs, cfg).items():
            if n:
                counts[name if name.endswith(CLASS_FAULT) else name + SCORE_FAULT] = n
    return counts


def fault_reasons(counts: dict) -> list[str]:
    """The accuracy run's failure reasons, in words, for output_faults' counts."""
    reasons = []
    for key, n in sorted(counts.items()):
        if key.endswith(CLASS_FAULT):
            name = key[: -len(CLASS_FAULT)]
            reasons.append(
                f"output '{name}' has {n} class values that are no class index (negative or not whole) "
                f"where the convention expects class indices: the output layout does not match the model"
            )
        elif key.endswith(SCORE_FAULT):
            name = key[: -len(SCORE_FAULT)]
            reasons.append(
                f"output '{name}' has {n} scores outside [0, 1] where the convention expects "
                f"probabilities: the output layout or convention does not match the model"
            )
        else:
            reasons.append(f"output '{key}' has {n} NaN/Inf values")
    return reasons


def nonfinite_counts(outputs: dict) -> dict:
    """{output name: count of NaN/Inf values} for the outputs that have any."""
    counts = {}
    for name, value in outputs.items():
        if np.issubdtype(value.dtype, np.floating):
            bad = int(value.size - np.count_nonzero(np.isfinite(value)))
            if bad:
                counts[name] = bad
    return counts
