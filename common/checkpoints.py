"""Load checkpoint weights safely: torch.load(weights_only=True) or safetensors, never arbitrary pickles."""
from __future__ import annotations

from pathlib import Path

from .errors import InputError, first_line


def load_torch_checkpoint(path: str | Path):
    """The whole object of a .pth file (weights and any metadata), read with torch.load(weights_only=True)."""
    import pickle

    import torch
    path = Path(path)
    if not path.is_file():
        raise InputError("checkpoint not found", path)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputError("refused: the checkpoint is a pickle that needs arbitrary code to load "
                         f"(torch.load weights_only=True: {first_line(exc)})", path) from None
    except Exception as exc:  # noqa: BLE001 - on garbage bytes torch's unpickler raises IndexError, struct.error, ...
        raise InputError(f"not a readable PyTorch checkpoint ({first_line(exc)})", path) from None


def load_state_dict(path: str | Path, key: str | None = None) -> dict:
    """Tensors of a checkpoint as {name: tensor}.

    .safetensors files are read with safetensors; anything else with torch.load(weights_only=True), which
    refuses pickles that would run code. A dict wrapping the weights (mmdet's 'state_dict', the RT-DETR
    authors' 'model' / 'ema') is unwrapped through `key` or the usual key names.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("checkpoint not found", path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise InputError(f"not a readable safetensors file ({exc})", path) from None
    obj = load_torch_checkpoint(path)
    for name in ([key] if key else []) + ["state_dict", "model", "ema"]:
        if isinstance(obj, dict) and isinstance(obj.get(name), dict):
            inner = obj[name]
            # RT-DETR authors' 'ema' entry wraps the weights one level deeper under 'module'
            obj = inner["module"] if isinstance(inner.get("module"), dict) else inner
            break
    if not isinstance(obj, dict) or not obj:
        raise InputError("no state dict found in the checkpoint", path)
    return obj
