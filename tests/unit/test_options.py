"""common/config/options.py: one declaration per flag, the same defaults from Python and from the command line, only
documented environment variables read, bad values refused naming the flag or the variable."""
from __future__ import annotations

import argparse
import dataclasses

import pytest

from common import cli
from common.errors import ConfigError
from common.config.options import ENV, RunConfig, add_groups, config_from_args, to_flags


def _parse(argv, *groups, environ=None, defaults=None):
    p = argparse.ArgumentParser()
    add_groups(p, *(groups or ("model", "engine", "dataset", "output", "accuracy", "timing")), defaults=defaults)
    return config_from_args(p.parse_args(argv), environ=environ or {})


def test_python_and_command_line_defaults_are_the_same():
    assert _parse(["--model", "rtmdet"]) == RunConfig(model="rtmdet")
    assert RunConfig(model="x").preflight == 4   # the CLI's default, not a separate one for Python callers


def test_to_flags_round_trips():
    cfg = RunConfig(model="m.yaml", variant="v", precision="fp16", batch_size=8, backend="tvm", threads=3,
                    dataset_dir="d", annotation="a.json", max_images=5, workers=0, streams=2, progress=False,
                    resume=False, checkpoint_s=0.0, preflight=0, warmup_s=0.5, min_iters=7, results_dir="r",
                    backend_options={"replay_dir": "rec", "replay_fps": 2627.0}, evaluator="pycocotools")
    assert _parse(to_flags(cfg)) == cfg
    acc = _parse(to_flags(cfg, "accuracy"), "model", "engine", "dataset", "output", "accuracy")
    assert acc == dataclasses.replace(cfg, warmup_s=1.0, min_iters=100)


def test_generic_environment_variables_change_nothing():
    environ = {"DEVICE": "gpu0", "BACKEND": "tvm", "PRECISION": "int8", "MODEL_VARIANT": "x",
               "COCO_IMAGES_DIR": "/nowhere", "THREADS": "9"}
    assert _parse(["--model", "rtmdet"], environ=environ) == RunConfig(model="rtmdet")


def test_documented_environment_variables_are_read():
    environ = {"SUITE_DEVICE": "cuda", "ONNX_MODEL": "m.onnx", "DATASETS_DIR": "d", "SUITE_PREFLIGHT": "0",
               "SUITE_CHECKPOINT_S": "2.5", "SUITE_STREAMS": "3", "SUITE_THREADS": "2"}
    cfg = _parse(["--model", "rtmdet", "--threads", "1"], environ=environ)
    assert (cfg.device, cfg.onnx, cfg.dataset_dir, cfg.preflight, cfg.checkpoint_s, cfg.streams, cfg.threads) == \
        ("cuda", "m.onnx", "d", 0, 2.5, 3, 1)   # a flag beats its variable
    assert set(ENV) >= set(environ)


@pytest.mark.parametrize("name,text", [("SUITE_STREAMS", "two"), ("SUITE_PREFLIGHT", "yes"),
                                        ("SUITE_CHECKPOINT_S", "abc"), ("SUITE_CHECKPOINT_S", "nan"),
                                        ("SUITE_THREADS", "abc"), ("SUITE_THREADS", "-2"),
                                        ("SUITE_THREADS", "100000")])
def test_bad_environment_values_are_config_errors_naming_the_variable(name, text):
    with pytest.raises(ConfigError, match=name):
        _parse(["--model", "rtmdet"], environ={name: text})


@pytest.mark.parametrize("flags", [["--checkpoint-interval", "-5"], ["--checkpoint-interval", "nan"],
                                   ["--threads", "100000"], ["--threads", "-1"], ["--bs", "0"]])
def test_bad_flag_values_exit_2(flags, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["accuracy", "--model", "rtmdet", *flags])
    assert exc.value.code == 2 and flags[0] in capsys.readouterr().err


def test_bad_environment_value_through_the_cli_is_exit_2(monkeypatch, capsys):
    monkeypatch.setenv("SUITE_STREAMS", "two")
    assert cli.main(["accuracy", "--model", "rtmdet"]) == 2
    assert "$SUITE_STREAMS='two'" in capsys.readouterr().err


def test_every_flag_says_its_default_in_help():
    p = argparse.ArgumentParser()
    add_groups(p, "model", "engine", "dataset", "output", "accuracy", "timing")
    for action in p._actions:
        if action.option_strings and action.dest not in ("help", "model") and not isinstance(
                action, argparse._StoreTrueAction):
            assert "default:" in (action.help or ""), action.option_strings


def test_frozen_config_validates_itself():
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunConfig(model="m").batch_size = 2
    for bad in ({"batch_size": 0}, {"threads": 10 ** 6}, {"checkpoint_s": float("nan")}, {"precision": "fp8"}):
        with pytest.raises(ConfigError):
            RunConfig(model="m", **bad)
