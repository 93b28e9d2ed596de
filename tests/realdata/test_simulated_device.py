"""The replay backend's simulated device: its latency is honoured, checked by counting with a fake clock (never by
timing), and a run with --replay-fps records the device's busy time."""
import threading

import pytest

from common.runtime.backends.replay_backend import ReplayBackend, SimulatedDevice
from common.errors import ConfigError


class FakeClock:
    """time that moves only when someone sleeps; sleeps may overshoot or stop short, as real ones do."""

    def __init__(self, error=0.0):
        self.now, self.error, self.slept, self.calls = 100.0, error, 0.0, 0
        self.lock = threading.Lock()

    def clock(self):
        return self.now

    def sleep(self, s):
        assert s > 0
        with self.lock:
            self.calls += 1
            self.slept += s
            self.now += s * (1 + self.error)


@pytest.mark.parametrize("error", [0.0, 0.3])
def test_each_batch_waits_until_its_deadline(error):
    clk = FakeClock(error)
    dev = SimulatedDevice(32 / 2627, clock=clk.clock, sleep=clk.sleep)
    start = clk.now
    for _ in range(11):
        dev.run_batch()
    # the device's time is the batches' time, whatever the sleeps' lateness (late sleeps cost at most one overshoot)
    assert dev.batches == 11 and dev.busy_s == pytest.approx(11 * 32 / 2627)
    assert clk.now - start >= 11 * 32 / 2627 - 1e-12
    if error == 0:
        assert clk.now - start == pytest.approx(11 * 32 / 2627)


def test_late_caller_starts_when_it_arrives_and_queued_callers_wait_their_turn():
    clk = FakeClock()
    dev = SimulatedDevice(1.0, clock=clk.clock, sleep=clk.sleep)
    clk.now += 5.0  # the harness was late: an idle device does not bank the time
    t0 = clk.now
    dev.run_batch()
    assert clk.now == pytest.approx(t0 + 1.0)
    # two requests arriving at once (two streams): the second finishes a full batch after the first
    dev._free_at = clk.now + 1.0
    t1 = clk.now
    dev.run_batch()
    assert clk.now == pytest.approx(t1 + 2.0)


def test_the_wait_is_a_sleep_not_a_spin():
    """The device's time passes in sleep calls (no host CPU): the fake clock only advances by sleeping, so a
    spinning device would never return here; count the sleeps instead of timing them."""
    clk = FakeClock()
    dev = SimulatedDevice(0.5, clock=clk.clock, sleep=clk.sleep)
    for _ in range(4):
        dev.run_batch()
    assert clk.calls == 4 and clk.slept == pytest.approx(2.0)


@pytest.mark.parametrize("bad", ["fast", -1, float("nan")])
def test_bad_rate_is_a_config_error(bad, tmp_path):
    with pytest.raises(ConfigError, match="replay-fps"):
        ReplayBackend(replay_dir=str(tmp_path), replay_fps=bad)._fps()


def test_run_with_a_simulated_device_records_its_time(shared_data, rtmdet_onnx, tmp_path):
    from common.harness.runs import RunConfig, run_accuracy
    base = dict(model="rtmdet", onnx=str(rtmdet_onnx), images_dir=str(shared_data / "coco" / "val2017"),
                annotation=str(shared_data / "coco" / "annotations" / "instances_val2017_person_subset350.json"),
                progress=False, workers=0, max_images=40, results_dir=str(tmp_path / "res"))
    live = run_accuracy(RunConfig(**base, record_outputs=str(tmp_path / "rec")))
    rec = run_accuracy(RunConfig(**base, backend="replay", batch_size=8, streams=2,
                                 backend_options={"replay_dir": str(tmp_path / "rec"), "replay_fps": 400}))
    assert rec["metrics"] == live["metrics"]
    assert rec["run"]["simulated_device_s"] == pytest.approx(5 * 8 / 400)  # 5 batches of 8 at 400 images/s
    assert live["run"]["simulated_device_s"] is None
