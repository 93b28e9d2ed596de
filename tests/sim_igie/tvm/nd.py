import os

import numpy as np


class NDArray:
    def __init__(self, value, device=None):
        self._value, self.device = np.asarray(value), device

    def numpy(self):
        return self._value

    asnumpy = numpy

    @property
    def shape(self):
        return self._value.shape


class OldNDArray:
    """NDArray of older TVM / IGIE releases: asnumpy() only (SIM_IGIE_NDARRAY=old)."""

    def __init__(self, value, device=None):
        self._value, self.device = np.asarray(value), device

    def asnumpy(self):
        return self._value

    @property
    def shape(self):
        return self._value.shape


def output_array(value):
    return OldNDArray(value) if os.environ.get("SIM_IGIE_NDARRAY") == "old" else NDArray(value)


def array(value, device=None) -> NDArray:
    return NDArray(np.array(value, copy=True), device)
