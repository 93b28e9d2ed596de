"""Call log of the IGIE simulation (test-only)."""
import json
import os


def log(call: str, **args):
    path = os.environ.get("SIM_IGIE_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"call": call, **args}, default=str) + "\n")
