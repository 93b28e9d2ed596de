"""What a new user types wrong (issue 31): a prefix of a flag is refused, never taken silently; a mistyped flag,
choice, model, variant or backend gets a suggestion; every entry point answers --version."""
from __future__ import annotations

import importlib.util

import pytest

from common.cli import build_parser
from common.errors import ConfigError
from helpers import REPO

ENTRY_POINTS = ["scripts/regress.py", "scripts/compare.py", "scripts/build_engine.py", "scripts/int8_sensitivity.py",
                "datasets/prepare.py", "models/rtmdet/export.py", "models/rtdetr/export.py"]


def _parse_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_a_prefix_of_a_long_option_is_refused(capsys):
    """Defect 9: `--anno` was silently taken as `--annotation` (argparse's prefix matching)."""
    err = _parse_error(capsys, ["accuracy", "--model", "rtmdet", "--anno", "x.json"])
    assert "unrecognized arguments: --anno (did you mean --ann" in err
    err = _parse_error(capsys, ["performance", "--model", "rtmdet", "--min-dur", "3"])
    assert "--min-duration" in err


def test_mistyped_flags_and_choices_get_a_suggestion(capsys):
    assert "did you mean --precision" in _parse_error(capsys, ["accuracy", "--model", "m", "--precison", "fp16"])
    assert "did you mean fp16" in _parse_error(capsys, ["accuracy", "--model", "m", "--precision", "fp61"])
    assert "did you mean accuracy" in _parse_error(capsys, ["acuracy"])
    # nothing close: no invented suggestion
    assert "did you mean" not in _parse_error(capsys, ["accuracy", "--model", "m", "--zzzzzz"])


def test_mistyped_model_variant_and_backend_get_a_suggestion():
    from common.config.specs import load_model
    from common.runtime.backends import backend_class
    with pytest.raises(ConfigError, match=r"unknown model 'rtmdt' \(did you mean rtmdet"):
        load_model("rtmdt")
    with pytest.raises(ConfigError, match=r"unknown variant 'r81' \(did you mean r18\?\)"):
        load_model("rtdetr").variant("r81")
    with pytest.raises(ConfigError, match=r"unknown backend 'igei' \(did you mean igie\?\)"):
        backend_class("igei")


def _main_of(path: str):
    spec = importlib.util.spec_from_file_location(f"_entry_{path.replace('/', '_')[:-3]}", REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize("entry", ["scripts/suite", *ENTRY_POINTS])
def test_every_entry_point_answers_version(entry, capsys):
    main = (lambda argv: build_parser().parse_args(argv)) if entry == "scripts/suite" else None
    if main is None:
        import sys
        real = sys.argv
        sys.argv = [entry, "--version"]
        try:
            with pytest.raises(SystemExit) as exc:
                _main_of(entry)()
        finally:
            sys.argv = real
    else:
        with pytest.raises(SystemExit) as exc:
            main(["--version"])
    out = capsys.readouterr().out
    assert exc.value.code == 0, out
    assert out.startswith("inference validation suite ") and "git " in out and "onnxruntime " in out, out


def test_suite_env_lists_the_precisions_that_run():
    """Defect 9: `suite env` listed ONNX Runtime's precisions without int8, although int8 runs on it."""
    from common.runtime.backends import backend_class
    assert "int8" in backend_class("onnxruntime").capabilities.precisions
