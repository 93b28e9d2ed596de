"""An RTMDet network from an mmdet config (read with mmengine's Config) and an mmdet checkpoint (key for key).

Checkpoint layout (mmengine runner / mmdet publish_model): {'meta': {...}, 'state_dict': {name: tensor}, ...}.
The weights are taken from 'state_dict'. RTMDet configs train with mmengine's EMAHook, which swaps the EMA
weights into 'state_dict' before saving (the raw weights, if kept at all, go to 'ema_state_dict'), so
'state_dict' holds the EMA weights that mmdet itself tests with; 'ema_state_dict' is never read.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from common.export.checkpoints import load_torch_checkpoint
from common.errors import ConfigError, InputError, first_line

from models.rtmdet.network import RTMDet, UnsupportedConfig

# mmdet's data preprocessor holds no persistent buffers; a checkpoint key under it is not a weight of the network
IGNORED_PREFIXES = ("data_preprocessor.",)


def read_config(path: str | Path):
    """The mmengine Config of an mmdet RTMDet config file."""
    path = Path(path)
    if not path.is_file():
        raise InputError("model config not found", path)
    try:
        from mmengine.config import Config
    except ImportError:
        raise ConfigError("reading an mmdet config needs mmengine (pip install mmengine-lite==0.10.7, see "
                          "requirements.txt)", path) from None
    scoped = sorted(set(re.findall(r"""['"](\w+)::""", path.read_text(errors="replace"))))
    for package in scoped:
        if importlib.util.find_spec(package) is None:
            raise ConfigError(f"the config inherits from '{package}::...', which needs the {package} package "
                              "installed; use a self-contained config instead (models/rtmdet/configs/, or the full "
                              "config mmdet dumps into its work_dir)", path)
    try:
        cfg = Config.fromfile(str(path))
    except Exception as exc:  # noqa: BLE001 - mmengine raises SyntaxError, ImportError, KeyError, ... for bad files
        raise ConfigError(f"not a readable mmengine config: {type(exc).__name__}: {first_line(exc)}", path) from None
    model = cfg.get("model")
    if not isinstance(model, dict) or model.get("type") != "RTMDet":
        kind = model.get("type") if isinstance(model, dict) else None
        raise ConfigError(f"model.type must be 'RTMDet', got {kind!r}", path)
    return cfg


def build_network(cfg, path: str | Path) -> RTMDet:
    model = cfg["model"]
    parts = {}
    for part in ("backbone", "neck", "bbox_head"):
        if not isinstance(model.get(part), dict):
            raise ConfigError(f"model.{part} is missing", path)
        parts[part] = model[part].to_dict() if hasattr(model[part], "to_dict") else dict(model[part])
    try:
        return RTMDet(**parts)
    except (UnsupportedConfig, TypeError) as exc:
        raise ConfigError(f"unsupported RTMDet config: {exc}", path) from None


def test_cfg(cfg) -> dict:
    """mmdet's model.test_cfg in the field names of the suite's rtmdet_raw decoder."""
    raw = cfg["model"].get("test_cfg") or {}
    out = {}
    for src, dst in (("score_thr", "score_threshold"), ("nms_pre", "nms_pre"), ("max_per_img", "max_per_img")):
        if src in raw:
            out[dst] = raw[src]
    if isinstance(raw.get("nms"), dict) and "iou_threshold" in raw["nms"]:
        out["iou_threshold"] = raw["nms"]["iou_threshold"]
    return out


def input_size(cfg) -> tuple[int, int] | None:
    """(height, width) of the test pipeline's Resize scale, if the config has one."""
    pipeline = cfg.get("test_pipeline") or []
    for step in pipeline:
        if isinstance(step, dict) and step.get("type") == "Resize" and step.get("scale"):
            w, h = step["scale"]          # mmcv scales are (width, height)
            return int(h), int(w)
    return None


def check_preprocess(cfg, variant, path):
    """The variant's preprocessing must be the one the config normalises with (mean/std, channel order)."""
    dp = cfg["model"].get("data_preprocessor") or {}
    if not dp or variant is None:
        return
    color = "rgb" if dp.get("bgr_to_rgb") else "bgr"
    pre = variant.preprocess
    problems = []
    if color != pre.color:
        problems.append(f"channel order {color} (config) vs {pre.color} (variant)")
    for name in ("mean", "std"):
        if name in dp and any(abs(float(a) - float(b)) > 1e-3 for a, b in zip(dp[name], getattr(pre, name))):
            problems.append(f"{name} {list(dp[name])} (config) vs {list(getattr(pre, name))} (variant)")
    if problems:
        raise ConfigError(f"the config's data_preprocessor does not match variant {variant.id}: "
                          + "; ".join(problems), path)


def load_weights(net: RTMDet, checkpoint: str | Path) -> dict:
    """Load an mmdet checkpoint into `net`, every key matched; returns the checkpoint's meta (or {})."""
    checkpoint = Path(checkpoint)
    obj = load_torch_checkpoint(checkpoint)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        weights, meta = obj["state_dict"], obj.get("meta") or {}
    elif isinstance(obj, dict) and obj and all(hasattr(v, "shape") for v in obj.values()):
        weights, meta = obj, {}       # a bare state dict
    else:
        raise InputError("no 'state_dict' in the checkpoint (expected an mmdet checkpoint: {'meta', 'state_dict'})",
                         checkpoint)
    weights = {k: v for k, v in weights.items() if not k.startswith(IGNORED_PREFIXES)}
    expected = net.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        def show(keys):
            return ", ".join(keys[:5]) + (f" ... ({len(keys)} in all)" if len(keys) > 5 else "")
        parts = ([f"missing keys: {show(missing)}"] if missing else []) + (
            [f"unexpected keys: {show(unexpected)}"] if unexpected else [])
        raise InputError("checkpoint does not match the config's network (wrong config for this checkpoint?): "
                         + "; ".join(parts), checkpoint)
    for name, tensor in expected.items():
        if tuple(weights[name].shape) != tuple(tensor.shape):
            raise InputError(f"checkpoint key {name} has shape {tuple(weights[name].shape)}, the config's network "
                             f"expects {tuple(tensor.shape)} (wrong config for this checkpoint?)", checkpoint)
    net.load_state_dict(weights, strict=True)
    classes = (meta.get("dataset_meta") or {}).get("classes") if isinstance(meta, dict) else None
    if classes is not None and len(classes) != net.bbox_head.num_classes:
        raise InputError(f"checkpoint meta lists {len(classes)} classes, the config's head has "
                         f"{net.bbox_head.num_classes}", checkpoint)
    return meta if isinstance(meta, dict) else {}


def load_rtmdet(checkpoint: str | Path, config: str | Path, variant=None) -> tuple[RTMDet, object]:
    """(network in eval mode with the checkpoint's weights, its mmengine Config)."""
    cfg = read_config(config)
    check_preprocess(cfg, variant, config)
    net = build_network(cfg, config)
    load_weights(net, checkpoint)
    return net.eval(), cfg
