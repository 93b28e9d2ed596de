"""Every section of a model spec is checked at load: a misspelt key is an error naming the file and the field,
never a section silently ignored (a variant dropping out of the CI matrix, tolerances falling back to defaults,
a decode setting such as iou_threshold left at its default)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from common.errors import ConfigError
from common.config.specs import MODELS_DIR, load_model, load_spec
from helpers import run_script

RTMDET = (MODELS_DIR / "rtmdet" / "model.yaml").read_text()


def _with(tmp_path: Path, old: str, new: str) -> Path:
    assert old in RTMDET
    path = tmp_path / "model.yaml"
    path.write_text(RTMDET.replace(old, new, 1))
    return path


def test_shipped_specs_load():
    for name in ("rtmdet", "rtdetr"):
        assert load_model(name).variants


@pytest.mark.parametrize("old,new,field", [
    ("    matrix:", "    matrx:", "matrx"),
    ("    fidelity:", "    fidelty:", "fidelty"),
    ("iou_threshold:", "iou_treshold:", "output.iou_treshold"),
    ("pad_value:", "pad_valeu:", "preprocess.pad_valeu"),
    ("annotation:", "anotation:", "evaluation.anotation"),
    ("name: input", "nam: input", "input.nam"),
])
def test_misspelt_keys_are_errors_naming_file_and_field(tmp_path, old, new, field):
    if old not in RTMDET:
        pytest.skip(f"the shipped rtmdet spec has no {old!r}")
    path = _with(tmp_path, old, new)
    with pytest.raises(ConfigError) as exc:
        load_spec(path)
    assert str(path) in str(exc.value) and field in str(exc.value)


def test_unknown_top_level_key_is_an_error(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_text("variant:\n  x: {}\n" + RTMDET)
    with pytest.raises(ConfigError, match=re.escape(f"{path}: variant")):
        load_spec(path)


def test_misspelt_section_through_the_command_line_exits_2_naming_it(tmp_path):
    path = _with(tmp_path, "    fidelity:", "    fidelty:")
    res = run_script("scripts/suite", "accuracy", "--model", path, "--onnx", "x.onnx", timeout=120)
    assert res.returncode == 2, res.stderr
    assert str(path) in res.stderr and "fidelty" in res.stderr and "Traceback" not in res.stderr
