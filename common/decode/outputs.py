"""Raw network outputs -> flat detections in original image pixels: the entry point of the decoders.

A decoder is chosen by the `output.convention` a spec declares, never guessed from file names. The registry and
shared helpers are in common/decode/registry.py; the generic DETR-family conventions in common/decode/detr.py; a
model family's own decoding (RTMDet's raw head) in models/<family>/decode.py, found without naming the family.
"""

from __future__ import annotations

from pathlib import Path

from common import REPO_ROOT, load_file_module
from common.decode import detr  # noqa: F401  registers its conventions
from common.decode.registry import (  # noqa: F401
    CLASS_FAULT,
    DECODERS,
    OUTPUT_KEYS,
    SCORE_CHECKS,
    SCORE_FAULT,
    fault_reasons,
    get_decoder,
    nonfinite_counts,
    output_faults,
)

_loaded: set = set()


def load_family_decoders(folder: Path) -> None:
    """Register the conventions of <folder>/decode.py (a model family's own decoding), once."""
    path = (Path(folder) / "decode.py").resolve()
    if path in _loaded or not path.is_file():
        return
    _loaded.add(path)
    load_file_module(f"_suite_decode_{path.parent.name}", path)


for _family in sorted((REPO_ROOT / "models").glob("*/decode.py")):
    load_family_decoders(_family.parent)
