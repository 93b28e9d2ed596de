"""The `fidelity:` section of a variant: how far a candidate engine (FP16, INT8, another runtime) may stray from
the FP32 reference (docs/fidelity.md). Typed and validated when the spec is loaded (common/config/specs.py)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from common.errors import ConfigError, quote


@dataclass(frozen=True)
class Tolerance:
    """Defaults suited to a real FP16 engine on real images (FP16 keeps ~3 decimal digits)."""

    min_cosine: float = 0.999  # per output, flattened
    # per output: max |cand - ref| / max |ref|. A single element decides it, and real FP16 has outliers (RTMDet's
    # raw box distances: 0.10 of the range at cosine 0.99994 with every detection matched), so it only catches
    # gross breakage; cosine and the detection checks carry the precision.
    max_norm_err: float = 0.25
    outputs: tuple | None = None  # outputs whose tensor errors gate the verdict (None: every float output)
    score_threshold: float = 0.3  # reference detections at or above this must be found by the candidate
    min_matched: float = 0.95  # share of those matched (IoU >= 0.5, same label)
    min_mean_iou: float = 0.9
    max_score_diff: float = 0.02  # mean |score diff| of the matched pairs
    max_ap_diff: float = 0.02  # |AP(candidate) - AP(reference)| on the compared images
    # localisation: an intermediate tensor leaves tolerance below this cosine or above this max error (share of
    # its range; 1.0 = off by default: one element of a Sigmoid fed by an FP16 Conv can be 0.3 off harmlessly)
    node_min_cosine: float = 0.999
    node_max_norm_err: float = 1.0
    # the FP16 range check's model of the device's float16 subnormals: flush (to zero) | keep; None: the backend's
    # declared capability (Capabilities.fp16_subnormals, flush unless a backend declares otherwise)
    fp16_subnormals: str | None = None


def parse_tolerance(raw, where: str, path) -> Tolerance:
    """A `fidelity:` mapping over the defaults; every mistake is a ConfigError naming the file and the field."""
    if raw is None:
        return Tolerance()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {quote(raw)}", path)
    known = {f.name for f in dataclasses.fields(Tolerance)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown key; known: {', '.join(sorted(known))}", path)
        if key == "outputs":
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise ConfigError(f"{where}.outputs: expected a list of output names, got {quote(value)}", path)
            values[key] = tuple(value)
        elif key == "fp16_subnormals":
            if value not in ("flush", "keep"):
                raise ConfigError(f"{where}.fp16_subnormals: expected flush or keep, got {quote(value)}", path)
            values[key] = value
        else:
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{where}.{key}: expected a finite number >= 0, got {quote(value)}", path)
            values[key] = float(value)
    return Tolerance(**values)
