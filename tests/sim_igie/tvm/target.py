from types import SimpleNamespace

from ._sim import log


class Target:
    def __init__(self, model: str, options: str):
        self.kind = SimpleNamespace(name="iluvatar")
        self.model, self.options = model, options

    def __str__(self):
        return f"iluvatar -model={self.model} {self.options}"


def iluvatar(model: str = "MR", options: str = "") -> Target:
    log("tvm.target.iluvatar", model=model, options=options)
    return Target(model, options)
