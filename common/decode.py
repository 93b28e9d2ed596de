"""Raw network outputs -> flat detections in original image pixels: the entry point of the decoders.

A decoder is chosen by the `output.convention` a spec declares, never guessed from file names (registry and
shared helpers: common/decode_base.py; dense heads: decode_dense.py; DETR family: decode_detr.py).
"""
from . import decode_dense, decode_detr  # noqa: F401  register their conventions
from .decode_base import DECODERS, OUTPUT_KEYS, get_decoder, nonfinite_counts  # noqa: F401
