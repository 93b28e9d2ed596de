"""How far an accuracy figure may move against its baseline before it is a regression.

The baseline and the new run evaluate the *same* images, so what varies between two acceptable engines (another
runtime version, FP16 kernels, a recompiled engine) is which borderline detections flip: a few images gain or
lose a match. AP is close to an average of per-image contributions, so the paired difference of two such runs
has a standard deviation that shrinks like 1/sqrt(N) with the image count N:

    tolerance(N) = max(floor, z * s / sqrt(N))        [AP points, 0-100 scale]

`s` is the per-image noise scale of that paired difference, in AP points x sqrt(images). It was calibrated on
the shared RTMDet-nano person model (docs/ci-regression.md, "Accuracy tolerance"): benign perturbations (FP16
vs FP32; the weights of one layer x (1 + 0.005 N(0,1)) or x (1 + 0.02 N(0,1)), three seeds) moved AP by at most
0.35 points at N=50 and 0.25 at N=100, i.e. |delta| * sqrt(N) <= 2.5. With s = 2.5 and z = 3 the tolerance is
1.06 points at 50 images, 0.75 at 100, 0.40 at 350 and 0.11 at 5000: a fixed 0.2 would be noise at 100 images
and loose at 5000. A model whose accuracy is noisier per image sets `accuracy_noise:` in its `matrix:` section;
the floor keeps a 5000-image run from failing on the last decimal of the evaluator.
"""

from __future__ import annotations

import math

DEFAULT_NOISE = 2.5  # s: AP points x sqrt(images), see above
DEFAULT_Z = 3.0  # z: how many standard deviations of the paired difference are tolerated
FLOOR_POINTS = 0.1


def tolerance_points(
    images: int, noise: float = DEFAULT_NOISE, z: float = DEFAULT_Z, floor: float = FLOOR_POINTS
) -> float:
    """The AP points an accuracy figure may drop below its baseline at this image count, max(floor, z * s / sqrt(N)):
    the accuracy verdict's margin (see above)."""
    if images < 1:
        raise ValueError(f"image count must be >= 1, got {images}")
    return max(floor, z * noise / math.sqrt(images))
