"""INT8 calibration images: a folder that is not the evaluation set, preprocessed like the evaluation inputs.

Calibrating on the images the accuracy is then measured on would flatter INT8, so a calibration folder is refused
when it is the evaluation images dir, or when any of its images is an image of the evaluation annotation file
(same file name, or the same file reached through a link). The set's content hash (every image's bytes, the
preprocessing and the count) goes into the engine cache key: other calibration images build another engine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.data.coco import IMAGE_SUFFIXES, DatasetRequest
from common.errors import ConfigError, InputError


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or a.samefile(b)
    except OSError:
        return False


def check_not_evaluation_set(
    calib_dir: Path, images: list[Path], eval_images_dir: Path | None, eval_file_names: set[str]
):
    """ConfigError (exit 2) when the calibration images are, or include, evaluation images."""
    if eval_images_dir is not None and _same_dir(calib_dir, eval_images_dir):
        raise ConfigError(
            f"the calibration dir is the evaluation images dir ({eval_images_dir}); calibrate on "
            "other images (e.g. a few hundred train2017 images), never on the evaluation set",
            calib_dir,
        )
    resolved_eval = eval_images_dir.resolve() if eval_images_dir is not None else None
    named = [p for p in images if p.name in eval_file_names]
    linked = [p for p in images if p not in named and resolved_eval is not None and p.resolve().parent == resolved_eval]
    if named or linked:
        why = (
            f"{named[0].name} has the file name of an image of the evaluation annotation file"
            if named
            else f"{linked[0].name} is a link to {linked[0].resolve()}, a file of the evaluation images dir"
        )
        raise ConfigError(
            f"{len(named) + len(linked)} calibration image(s) belong to the evaluation set ({why}); "
            "calibrate on images that are not evaluated (copies or links of evaluation images count "
            "as evaluation images)",
            calib_dir,
        )


@dataclass(frozen=True)
class CalibrationSet:
    directory: Path
    images: tuple  # image paths, sorted, at most the requested count
    preprocess: Callable  # common.data.preprocess.Preprocessor
    sha256: str

    @classmethod
    def for_variant(cls, calib_dir: str, variant, count: int | None, evaluation: DatasetRequest) -> CalibrationSet:
        """The first `count` calibration images of `calib_dir` (None: all), checked against the evaluation set
        that `evaluation` locates."""
        from common.data.coco import read_annotations
        from common.data.preprocess import Preprocessor

        directory = Path(calib_dir)
        if not directory.is_dir():
            raise InputError("calibration images dir not found", directory)
        images = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not images:
            raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the calibration dir", directory)
        try:
            eval_dir, ann = evaluation.resolve(variant.annotation)
            names = {img["file_name"].rsplit("/", 1)[-1] for img in read_annotations(ann)["images"]}
        except ConfigError:
            # no evaluation set configured: still refuse COCO's evaluation folder by its name
            eval_dir, names = None, set()
            if directory.resolve().name == "val2017":
                raise ConfigError(
                    "the calibration dir is a val2017 folder, the evaluation set; calibrate on other images", directory
                ) from None
        check_not_evaluation_set(directory, images, eval_dir, names)
        images = images[:count]
        pre = Preprocessor(variant.preprocess, variant.height, variant.width)
        h = hashlib.sha256(variant.preprocess.key(variant.height, variant.width).encode())
        for p in images:
            h.update(p.name.encode())
            h.update(hashlib.sha256(p.read_bytes()).digest())
        return cls(directory, tuple(images), pre, h.hexdigest())

    def batches(self, batch_size: int):
        """Preprocessed float32 batches of exactly batch_size (the last one padded by repeating its last image,
        as static-batch engines are fed)."""
        from common.data.coco import read_image

        x = np.stack([self.preprocess(read_image(str(p)))[0] for p in self.images])
        for i in range(0, len(x), batch_size):
            b = x[i : i + batch_size]
            if len(b) < batch_size:
                b = np.concatenate([b, np.repeat(b[-1:], batch_size - len(b), axis=0)])
            yield np.ascontiguousarray(b, np.float32)

    def describe(self) -> dict:
        """What an engine's record says of its calibration set: dir, image count, content sha256."""
        return {"dir": str(self.directory), "num_images": len(self.images), "sha256": self.sha256}
