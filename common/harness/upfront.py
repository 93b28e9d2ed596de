"""The checks of a run that need no image, done before the first image is read: a configuration error then
costs a second, not the decoding of the first batches (and no half-drawn progress bar comes before it)."""

from __future__ import annotations

from pathlib import Path

from common.errors import BackendUnavailable, ConfigError, InputError
from common.harness.requests import EngineRequest


def check_before_images(req: EngineRequest) -> None:
    """The backend exists and runs here, it has the precision and device asked for, and an INT8 build has a
    calibration folder with images in it: each a ConfigError / InputError (exit 2) naming what is wrong."""
    from common.runtime.backends import backend_class

    cls = backend_class(req.backend)  # an unknown name: ConfigError with a suggestion
    caps = cls.capabilities
    why = caps.supports(req.precision, req.device)
    if why:
        raise ConfigError(f"backend '{req.backend}': {why}; `scripts/suite env` lists what each runtime runs")
    ok, why_not = cls.availability()
    if not ok:
        raise BackendUnavailable(f"backend '{req.backend}' is unavailable: {why_not}")
    if req.precision == "int8" and not caps.replays:
        if not req.calib_dir:
            raise ConfigError(
                f"{req.backend} int8 needs calibration images: pass --calib-dir DIR (or set "
                "CALIB_DIR) with images that are not the evaluation set"
            )
        from common.data.coco import IMAGE_SUFFIXES

        calib = Path(req.calib_dir)
        if not calib.is_dir():
            raise InputError("calibration images dir not found", calib)
        if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in calib.iterdir()):
            raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the calibration dir", calib)
