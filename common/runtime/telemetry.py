"""Device memory and power sampled in a background thread while a performance run times its engine.

Sources: `ixsmi` on Iluvatar (IXUCA / IGIE), `nvidia-smi` on NVIDIA devices (both queried as
`--query-gpu=memory.used,<power field> --format=csv,noheader,nounits -i <index>`; ixsmi names the power field
`gpu.power.draw` on corex 4.x and `power.draw` on 3.x, both are tried), and the process's resident memory
(psutil) on the host, which is the memory figure of a CPU backend. A source that is absent or fails is recorded
as absent (null with the reason), never as zero: a missing power meter must not read as a free device.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from typing import Any

MIB = 1 << 20
_POWER_FIELDS = {"ixsmi": ("gpu.power.draw", "power.draw"), "nvidia-smi": ("power.draw",)}


def _number(text: str) -> float | None:
    try:
        return float(text.strip().split()[0])
    except (ValueError, IndexError):
        return None  # "[N/A]", "[Not Supported]", "N/A"


class SmiProbe:
    """One `<tool> --query-gpu=memory.used,<power>` call per sample; memory in MiB, power in W."""

    def __init__(self, tool: str, index: int = 0, timeout_s: float = 5.0):
        self.tool, self.index, self.timeout_s = tool, index, timeout_s
        self.path = shutil.which(tool)
        self.power_fields = list(_POWER_FIELDS[tool])
        self.error: str | None = None if self.path else f"{tool} is not on PATH"
        self.power_reason: str | None = None

    def _query(self, power_field: str):
        assert self.path is not None  # sample() is called only once the tool was found
        cmd = [
            self.path,
            f"--query-gpu=memory.used,{power_field}",
            "--format=csv,noheader,nounits",
            "-i",
            str(self.index),
        ]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout_s)

    def sample(self) -> tuple[float | None, float | None]:
        """(memory MiB, power W) of one query; (None, None) once the tool failed, `error` saying why."""
        if self.error:
            return None, None
        try:
            while True:
                res = self._query(self.power_fields[0])
                invalid = "not a valid field" in (res.stdout + res.stderr).lower()
                if (res.returncode == 0 and not invalid) or len(self.power_fields) == 1:
                    break
                self.power_fields.pop(0)  # older ixsmi: the other power field name
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.error = f"{self.tool} failed: {type(exc).__name__}: {exc}"
            return None, None
        lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
        if res.returncode != 0 or not lines:
            detail = (res.stderr or res.stdout).strip().splitlines()
            self.error = f"{self.tool} exited {res.returncode}: {detail[0] if detail else 'no output'}"
            return None, None
        fields = [f.strip() for f in lines[0].split(",")]
        memory = _number(fields[0]) if fields else None
        if memory is None:
            self.error = f"{self.tool} printed no memory.used figure: {lines[0]!r}"
            return None, None
        power = _number(fields[1]) if len(fields) > 1 else None
        if power is None:
            self.power_reason = (
                f"{self.tool} reports {self.power_fields[0]} as {fields[1] if len(fields) > 1 else 'nothing'!r}"
            )
        return memory, power


class Sampler:
    """with Sampler(tool) as s: ...; s.summary() -> the record's `telemetry` block. `tool`: the SMI tool that
    watches the device (the backend's telemetry_tool()), None for a runtime on the host CPU."""

    def __init__(self, tool: str | None, interval_s: float = 0.2, gpu_index: int | None = None):
        import psutil

        self.process = psutil.Process()
        self.tool = tool
        index = gpu_index if gpu_index is not None else int(os.environ.get("SUITE_GPU_INDEX", "0") or 0)
        self.probe = SmiProbe(self.tool, index) if self.tool else None
        self.interval_s = interval_s
        self.memory: list[float] = []
        self.power: list[float] = []
        self.rss: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="telemetry", daemon=True)

    def _sample(self):
        self.rss.append(self.process.memory_info().rss / MIB)
        if self.probe is not None:
            memory, power = self.probe.sample()
            if memory is not None:
                self.memory.append(memory)
            if power is not None:
                self.power.append(power)

    def _loop(self):
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self):
        self._sample()  # at least one sample however short the run
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()
        return False

    def summary(self, fps: float | None = None) -> dict:
        """The record's memory and power sections (source, peak / mean, samples, or why absent) and FPS per watt."""
        rss: dict[str, Any] = {
            "source": "psutil (host process RSS)",
            "peak_mib": max(self.rss),
            "samples": len(self.rss),
        }
        memory: dict[str, Any]
        power: dict[str, Any]
        if self.probe is None:
            memory = {**rss, "reason": None}
            power = {
                "source": None,
                "mean_w": None,
                "max_w": None,
                "samples": 0,
                "reason": "no power meter for a CPU backend (RAPL is not read)",
            }
        else:
            why = self.probe.error
            memory = {
                "source": self.tool,
                "peak_mib": max(self.memory) if self.memory else None,
                "samples": len(self.memory),
                "reason": None if self.memory else why,
            }
            power = {
                "source": self.tool,
                "mean_w": sum(self.power) / len(self.power) if self.power else None,
                "max_w": max(self.power) if self.power else None,
                "samples": len(self.power),
                "reason": None if self.power else (why or self.probe.power_reason),
            }
        fpw = fps / power["mean_w"] if fps and power["mean_w"] else None
        return {
            "interval_s": self.interval_s,
            "memory": memory,
            "host_rss": rss,
            "power": power,
            "fps_per_watt": fpw,
            "fps_per_watt_reason": None if fpw is not None else (power["reason"] or "no FPS figure"),
        }


def format_telemetry(t: dict) -> str:
    """The memory and power lines of a run's output; an absent figure says why."""
    m, p = t["memory"], t["power"]
    mem = f"{m['peak_mib']:.0f} MiB peak ({m['source']})" if m["peak_mib"] is not None else f"absent ({m['reason']})"
    pw = (
        f"{p['mean_w']:.1f} W mean, {p['max_w']:.1f} W max ({p['source']}), {t['fps_per_watt']:.2f} FPS/W"
        if p["mean_w"] is not None
        else f"absent ({p['reason']})"
    )
    return f" memory      {mem}\n power       {pw}"
