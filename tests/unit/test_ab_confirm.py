"""Issue 35 item 3: the confirming A/B re-measurement of an FPS drop estimates its own spread from its pairs and
fails only beyond that spread as well as the band. A simulated node (no wall-clock timing): each run's FPS is
the model's true speed times a slowly drifting host load times per-run noise of a chosen size, seeded."""
import json
from pathlib import Path

import numpy as np

from common.ci import regress
from common.ci.matrix import Case
from common.ci.verdicts import FAILED, WARN, FpsRule, compare_fps, confirm_fps

BASE = {"fps": 100.0, "cov": 0.01}


def _record(fps: float) -> dict:
    return {"kind": "performance", "metrics": {"fps": fps}, "timing": {"cov": 0.01}}


def simulated_ab(seed: int, speed: float, noise: float, rounds: int = 5, drift: float = 0.05):
    """(A records, B records) of `rounds` alternated runs: A runs at `speed` x B's, both under one host load
    (an AR(1) drift) and each with its own multiplicative noise of sd `noise`."""
    rng = np.random.default_rng(seed)
    load, a, b = 1.0, [], []
    for _ in range(rounds):
        for side, true_fps in ((a, 100.0 * speed), (b, 100.0)):
            load = 0.7 * load + 0.3 * (1.0 + rng.normal(0.0, drift))
            side.append(_record(true_fps * load * (1.0 + rng.normal(0.0, noise))))
    return a, b


def _first():
    first = compare_fps({"fps": 90.0, "cov": 0.01}, BASE, FpsRule())   # the matrix's measurement: -10 %, band 5 %
    assert first[0] == FAILED and first[2]["band"] == 0.05
    return first


def _fail_rate(speed: float, noise: float, n: int = 400) -> float:
    first = _first()
    return float(np.mean([_confirm(first, *simulated_ab(seed, speed, noise))[0] == FAILED for seed in range(n)]))


def _confirm(first, a, b):
    return confirm_fps(first, a, BASE, FpsRule(), b)


def test_unchanged_model_on_a_noisy_host_is_not_a_confirmed_regression():
    # 8 % per-run noise: a mean of 5 pairs alone fell below the 5 % band in about one confirmation of six
    rate = _fail_rate(1.0, 0.08)
    assert rate <= 0.03, rate


def test_real_drop_is_still_confirmed_on_the_same_host():
    assert _fail_rate(0.70, 0.08) >= 0.95
    assert _fail_rate(0.85, 0.02) >= 0.95   # a quiet host: a 15 % drop is far outside a small spread


def test_the_verdict_reports_the_spread():
    a, b = simulated_ab(1, 0.70, 0.08)
    status, text, nums = _confirm(_first(), a, b)
    assert status == FAILED and nums["confirm_pairs"] == 5 and 0 < nums["confirm_spread"] < 0.3
    assert f"spread ±{nums['confirm_spread'] * 100:.1f}% over 5 pairs" in text
    # an unchanged model whose pairs scatter widely: the drop is inside its own spread
    noisy_a = [_record(f) for f in (80.0, 110.0, 85.0, 105.0, 90.0)]
    noisy_b = [_record(100.0)] * 5
    status, text, nums = _confirm(_first(), noisy_a, noisy_b)
    assert nums["confirm_ratio"] < 0.95 and status == WARN, text
    assert "inside the re-measurement's own spread" in text


def test_interleaved_runs_the_configured_rounds_and_pairs_them_in_run_order(tmp_path, monkeypatch):
    order = []

    def fake_run(cmd, timeout_s, log):   # a case process: writes one record into its --results-dir
        results = Path(cmd[cmd.index("--results-dir") + 1])
        side = "A" if results.name == "confirm" else "B"
        order.append(side)
        # names that sort against the run order (a later run gets an earlier-sorting name)
        (results / f"{100 - len(order):03d}.json").write_text(json.dumps(_record(len(order))))
        return 0, ""
    monkeypatch.setattr(regress, "_run_process", fake_run)
    (tmp_path / "logs").mkdir()
    case = Case("m", "v", "onnxruntime", "fp32", 1, "performance", "m.yaml", onnx="/x/a.onnx")
    opts = regress.CaseOptions()
    a, b, error = regress._interleaved(case, case, opts, tmp_path, opts.confirm_rounds)
    assert error is None and order == ["A", "B"] * 5 and len(a) == len(b) == opts.confirm_rounds == 5
    fps = [json.loads((tmp_path / p).read_text())["metrics"]["fps"] for p in a]
    assert fps == [1, 3, 5, 7, 9]   # run order, whatever the names' sort order
