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


def array(value, device=None) -> NDArray:
    return NDArray(np.array(value, copy=True), device)
