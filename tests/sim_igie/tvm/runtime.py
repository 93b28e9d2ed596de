import json

import numpy as np

from ._sim import log
from .nd import NDArray


class _Factory:
    def __init__(self, header, onnx_bytes, device):
        import onnxruntime as ort
        self.header, self.device = header, device
        so = ort.SessionOptions()
        # the simulated device computes in one lane of its own: a pool over every host core would only compete
        # with the harness (and, in the test run, with the other pytest workers) for them
        so.intra_op_num_threads = 1
        self.session = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])


class LoadedLib:
    def __init__(self, header, onnx_bytes):
        self.header, self.onnx_bytes = header, onnx_bytes

    def __getitem__(self, name):
        if name != "default":
            raise KeyError(name)
        return lambda device: _Factory(self.header, self.onnx_bytes, device)


def load_module(path: str) -> LoadedLib:
    log("tvm.runtime.load_module", path=path)
    with open(path, "rb") as f:
        head, onnx_bytes = f.read().split(b"\n", 1)
    return LoadedLib(json.loads(head), onnx_bytes)


class TimeResult:
    def __init__(self, results):
        self.results = results
        self.mean = float(np.mean(results))


__all__ = ["load_module", "LoadedLib", "NDArray", "TimeResult"]
