import os
import time

import numpy as np

from .._sim import log
from ..nd import NDArray, output_array
from ..runtime import TimeResult


class _Inner:
    def __init__(self, owner):
        self.owner = owner

    def time_evaluator(self, name, device, number=10, repeat=1, **kwargs):
        log("time_evaluator", name=name, number=number, repeat=repeat)

        def run():
            results = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                for _ in range(number):
                    self.owner.run()
                results.append((time.perf_counter() - t0) / number)
            return TimeResult(results)
        return run


class GraphModule:
    def __init__(self, factory):
        self.factory = factory
        self.inputs, self.outputs = {}, []
        self.module = _Inner(self)
        log("GraphModule")

    def set_input(self, name, value):
        shape = self.factory.header["input_dict"].get(name)
        if shape is None:
            raise KeyError(f"engine has no input {name!r}")
        arr = value.numpy() if isinstance(value, NDArray) else np.asarray(value)
        if list(arr.shape) != list(shape):
            raise ValueError(f"engine compiled for input shape {shape}, got {list(arr.shape)}")
        log("set_input", name=name, shape=list(arr.shape), dtype=str(arr.dtype))
        self.inputs[name] = arr

    def run(self):
        self.outputs = self.factory.session.run(None, self.inputs)

    def get_num_outputs(self):
        return len(self.factory.session.get_outputs())

    def get_output(self, index):
        value = self.outputs[index]
        # fault injection for tests: an engine whose output has another shape than the ONNX declares
        if os.environ.get("SIM_IGIE_BAD_OUTPUT_SHAPE") == str(index):
            value = value[..., :-1] if value.ndim else value
        return output_array(value)
