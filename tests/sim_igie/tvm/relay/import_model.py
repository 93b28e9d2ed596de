from .._sim import log


class RelayModule:
    def __init__(self, path, input_dict):
        self.path, self.input_dict = path, {k: list(v) for k, v in input_dict.items()}


def import_model_to_igie(model_path, input_dict, backend="igie", **kwargs):
    log("import_model_to_igie", model_path=model_path, input_dict=input_dict, backend=backend, kwargs=kwargs)
    if not isinstance(input_dict, dict) or not input_dict:
        raise ValueError("input_dict must map input names to shapes")
    return RelayModule(model_path, input_dict), {"weights": "simulated"}
