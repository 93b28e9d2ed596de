"""SIMULATED tvm.transform.PassContext (test-only)."""
from ._sim import log


class PassContext:
    current = None

    def __init__(self, opt_level=2, **kwargs):
        self.opt_level, self.kwargs = opt_level, kwargs

    def __enter__(self):
        log("tvm.transform.PassContext", opt_level=self.opt_level)
        PassContext.current = self
        return self

    def __exit__(self, *exc):
        PassContext.current = None
