"""Load checkpoint weights safely: torch.load(weights_only=True) or safetensors, never arbitrary pickles."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from common.errors import InputError, first_line

_TORCH_ZIP, _PICKLE_PROTO = b"PK\x03\x04", b"\x80"  # torch.save's zip format / legacy pickle format


def _refusal_line(exc: Exception) -> str | None:
    """The line of a weights_only UnpicklingError that says a global was blocked (a pickle that needs code to
    load), or None when the unpickler failed for another reason (garbage, truncation)."""
    for line in str(exc).splitlines():
        if "global" in line.lower() and ("unsupported" in line.lower() or "blocked" in line.lower()):
            return line.strip()
    return None


def load_torch_checkpoint(path: str | Path):
    """The whole object of a .pth file (weights and any metadata), read with torch.load(weights_only=True)."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError("checkpoint not found", path)
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(_TORCH_ZIP) or head.startswith(_PICKLE_PROTO)):
        raise InputError("not a readable PyTorch checkpoint (neither torch.save's zip format nor a pickle)", path)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch raises UnpicklingError both for a blocked global and for bytes it cannot parse
        refusal = _refusal_line(exc)
        if refusal is None:
            detail = next(
                (
                    ln.strip()
                    for ln in str(exc).splitlines()
                    if ln.strip()
                    and "WeightsUnpickler" not in ln
                    and "weights_only" not in ln
                    and "torch.load" not in ln
                ),
                first_line(exc),
            )
            raise InputError(f"not a readable PyTorch checkpoint ({detail})", path) from None
        raise InputError(
            "refused: the checkpoint is a pickle that needs arbitrary code to load "
            f"(torch.load weights_only=True: {refusal})",
            path,
        ) from None
    except Exception as exc:  # noqa: BLE001 - on garbage bytes torch's unpickler raises IndexError, struct.error, ...
        raise InputError(f"not a readable PyTorch checkpoint ({first_line(exc)})", path) from None


def check_safetensors(path: str | Path) -> Path:
    """Refuse a .safetensors file whose header does not parse or whose length is not what the header says
    (a truncated download): cheap, reads the header only. transformers' from_pretrained would otherwise fail
    deep inside with a SafetensorError."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError(f"{size} bytes, shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8:
                raise ValueError(f"header of {n} bytes in a file of {size}")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise InputError(f"not a readable safetensors file ({exc})", path) from None
    if 8 + n + end != size:
        raise InputError(
            f"not a readable safetensors file (truncated or padded: {size} bytes, the header says {8 + n + end})", path
        )
    return path


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

        check_safetensors(path)
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
