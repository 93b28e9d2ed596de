"""Shared fixtures. Real-data tests read ../shared/data through $SUITE_SHARED_DATA and skip when it is unset."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "datasets"))

SHARED_ENV = "SUITE_SHARED_DATA"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    value = os.environ.get(SHARED_ENV)
    if not value:
        pytest.skip(f"${SHARED_ENV} is not set: point it at shared/data to run the real-data tests")
    path = Path(value).resolve()
    if not (path / "coco" / "val2017").is_dir():
        pytest.skip(f"${SHARED_ENV}={value} has no coco/val2017 directory")
    return path


@pytest.fixture(scope="session")
def rtmdet_onnx(shared_data) -> Path:
    path = shared_data / "models" / "rtmdet-nano-person" / "rtmdet_nano.onnx"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture(scope="session")
def coco_layout(shared_data, tmp_path_factory) -> Path:
    """The public recipes' layout (images/val2017, annotations/) made of symlinks to the shared data."""
    root = tmp_path_factory.mktemp("coco")
    (root / "images").mkdir()
    (root / "images" / "val2017").symlink_to(shared_data / "coco" / "val2017")
    (root / "annotations").symlink_to(shared_data / "coco" / "annotations")
    return root


@pytest.fixture(scope="session")
def rtmdet_raw_onnx(rtmdet_onnx, tmp_path_factory) -> Path:
    """The shared end2end model cut at its raw head outputs (the nano-person-raw variant's output names): the
    trained network without the graph's own NMS."""
    import onnx.utils

    from common.specs import load_model

    out = load_model("rtmdet").variant("nano-person-raw").output
    path = tmp_path_factory.mktemp("rawcut") / "rtmdet_nano_raw.onnx"
    onnx.utils.extract_model(str(rtmdet_onnx), str(path), ["input"], list(out["cls"]) + list(out["reg"]))
    return path
