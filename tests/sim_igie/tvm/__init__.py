"""SIMULATED IGIE 'tvm' package for contract tests; see ../README.md. Not the real SDK."""
import os

from . import contrib, nd, relay, runtime, target, transform  # noqa: F401
from ._sim import log

# tests change the "SDK version" to prove that a new SDK rebuilds cached engines
__version__ = os.environ.get("SIM_IGIE_VERSION", "0.0-sim")
SIMULATION = True


class Device:
    def __init__(self, kind: str, index: int):
        self.kind, self.index = kind, index
        self.syncs = 0

    def sync(self):
        self.syncs += 1
        log("device.sync")


def device(kind: str, index: int = 0) -> Device:
    log("tvm.device", kind=kind, index=index)
    if kind != "iluvatar":
        raise ValueError(f"simulated IGIE knows only the iluvatar device, not {kind}")
    return Device(kind, index)
