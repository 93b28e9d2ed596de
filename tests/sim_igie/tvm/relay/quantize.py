"""SIMULATED relay.quantize (test-only): records the calibration data it is given; runs nothing in int8."""
from contextlib import contextmanager

from .._sim import log

_config: dict = {}


@contextmanager
def qconfig(**kwargs):
    log("relay.quantize.qconfig", **kwargs)
    _config.update(kwargs)
    try:
        yield
    finally:
        _config.clear()


def quantize(mod, params=None, dataset=None):
    from ..transform import PassContext
    if PassContext.current is None:
        raise RuntimeError("simulated IGIE: quantize outside tvm.transform.PassContext")
    if _config.get("calibrate_mode") in ("percentile", "kl_divergence") and not dataset:
        raise ValueError("data-aware calibration needs a dataset")
    batches = [{k: list(v.shape) for k, v in d.items()} for d in dataset or []]
    log("relay.quantize.quantize", config=dict(_config), batches=batches,
        means=[float(next(iter(d.values())).numpy().mean()) for d in dataset or []])
    mod.quantized = True
    return mod
