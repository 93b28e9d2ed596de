"""The authors' RT-DETR / RT-DETRv2 state dict (lyuwenyu/RT-DETR .pth releases) -> transformers key names.

Written from the published module names of the authors' PResNet, HybridEncoder and RTDETRTransformer(v2)
(backbone.conv1.conv1_k, backbone.res_layers.S.blocks.B.branch2x / short, encoder.encoder.I.layers.J with
nn.MultiheadAttention, decoder.decoder.layers.I with cross_attn, dec_score_head / dec_bbox_head, ...). Both
directions are here: `to_transformers` for loading a release, `to_original` to write a transformers network in the
authors' layout (the tests use it to make an authors'-layout .pth from a random network).

One rule is not a renaming: the authors' decoder stops at `eval_idx` at inference, so decoder layers and heads
beyond the transformers config's `decoder_layers` are dropped (set decoder_layers = eval_idx + 1 in the config).
The authors' `anchors` / `valid_mask` buffers (precomputed for eval_spatial_size) are dropped too: transformers
computes the same anchors from the feature map sizes.
"""
from __future__ import annotations

import re
from pathlib import Path

from common.errors import InputError

# (authors' name, transformers name) templates. {i}, {j}: indices, the same on both sides; {rest}: the tail
# (weight, bias, running_mean, ...); {stem}: conv1_<k> <-> embedder.<k - 1>; {br}: branch2<a|b|c> <-> layer.<0|1|2>.
# Both directions use the same table: the first template that matches wins, so where the authors have two spellings
# (v1 index / v2 name of a Sequential), the v2 one comes first and is what to_original writes.
B = "model.backbone.model"
RULES: list[tuple[str, str]] = [
    # PResNet: stem conv1_1..conv1_3 (vd) or conv1_1 (7x7); residual blocks; the "d" shortcut with average pooling
    ("backbone.conv1.conv1_{stem}.conv.{rest}", B + ".embedder.embedder.{stem}.convolution.{rest}"),
    ("backbone.conv1.conv1_{stem}.norm.{rest}", B + ".embedder.embedder.{stem}.normalization.{rest}"),
    ("backbone.res_layers.{i}.blocks.{j}.branch2{br}.conv.{rest}", B + ".encoder.stages.{i}.layers.{j}.layer.{br}.convolution.{rest}"),
    ("backbone.res_layers.{i}.blocks.{j}.branch2{br}.norm.{rest}", B + ".encoder.stages.{i}.layers.{j}.layer.{br}.normalization.{rest}"),
    ("backbone.res_layers.{i}.blocks.{j}.short.conv.conv.{rest}", B + ".encoder.stages.{i}.layers.{j}.shortcut.1.convolution.{rest}"),
    ("backbone.res_layers.{i}.blocks.{j}.short.conv.norm.{rest}", B + ".encoder.stages.{i}.layers.{j}.shortcut.1.normalization.{rest}"),
    ("backbone.res_layers.{i}.blocks.{j}.short.conv.{rest}", B + ".encoder.stages.{i}.layers.{j}.shortcut.convolution.{rest}"),
    ("backbone.res_layers.{i}.blocks.{j}.short.norm.{rest}", B + ".encoder.stages.{i}.layers.{j}.shortcut.normalization.{rest}"),
    # hybrid encoder: input projections (v2 named, v1 indexed), AIFI layers, CCFF (same names on both sides)
    ("encoder.input_proj.{i}.conv.{rest}", "model.encoder_input_proj.{i}.0.{rest}"),
    ("encoder.input_proj.{i}.norm.{rest}", "model.encoder_input_proj.{i}.1.{rest}"),
    ("encoder.input_proj.{i}.0.{rest}", "model.encoder_input_proj.{i}.0.{rest}"),
    ("encoder.input_proj.{i}.1.{rest}", "model.encoder_input_proj.{i}.1.{rest}"),
    ("encoder.encoder.{i}.layers.{j}.self_attn.out_proj.{rest}", "model.encoder.aifi.{i}.layers.{j}.self_attn.o_proj.{rest}"),
    ("encoder.encoder.{i}.layers.{j}.linear1.{rest}", "model.encoder.aifi.{i}.layers.{j}.mlp.fc1.{rest}"),
    ("encoder.encoder.{i}.layers.{j}.linear2.{rest}", "model.encoder.aifi.{i}.layers.{j}.mlp.fc2.{rest}"),
    ("encoder.encoder.{i}.layers.{j}.norm1.{rest}", "model.encoder.aifi.{i}.layers.{j}.self_attn_layer_norm.{rest}"),
    ("encoder.encoder.{i}.layers.{j}.norm2.{rest}", "model.encoder.aifi.{i}.layers.{j}.final_layer_norm.{rest}"),
    ("encoder.lateral_convs.{rest}", "model.encoder.lateral_convs.{rest}"),
    ("encoder.fpn_blocks.{rest}", "model.encoder.fpn_blocks.{rest}"),
    ("encoder.downsample_convs.{rest}", "model.encoder.downsample_convs.{rest}"),
    ("encoder.pan_blocks.{rest}", "model.encoder.pan_blocks.{rest}"),
    # decoder: input projections, query selection heads, denoising / query embeddings, per-layer heads
    ("decoder.input_proj.{i}.conv.{rest}", "model.decoder_input_proj.{i}.0.{rest}"),
    ("decoder.input_proj.{i}.norm.{rest}", "model.decoder_input_proj.{i}.1.{rest}"),
    ("decoder.input_proj.{i}.0.{rest}", "model.decoder_input_proj.{i}.0.{rest}"),
    ("decoder.input_proj.{i}.1.{rest}", "model.decoder_input_proj.{i}.1.{rest}"),
    ("decoder.enc_output.proj.{rest}", "model.enc_output.0.{rest}"),
    ("decoder.enc_output.norm.{rest}", "model.enc_output.1.{rest}"),
    ("decoder.enc_output.0.{rest}", "model.enc_output.0.{rest}"),
    ("decoder.enc_output.1.{rest}", "model.enc_output.1.{rest}"),
    ("decoder.enc_score_head.{rest}", "model.enc_score_head.{rest}"),
    ("decoder.enc_bbox_head.{rest}", "model.enc_bbox_head.{rest}"),
    ("decoder.denoising_class_embed.{rest}", "model.denoising_class_embed.{rest}"),
    ("decoder.tgt_embed.{rest}", "model.weight_embedding.{rest}"),
    ("decoder.query_pos_head.{rest}", "model.decoder.query_pos_head.{rest}"),
    ("decoder.dec_score_head.{i}.{rest}", "model.decoder.class_embed.{i}.{rest}"),
    ("decoder.dec_bbox_head.{i}.{rest}", "model.decoder.bbox_embed.{i}.{rest}"),
    ("decoder.decoder.layers.{i}.self_attn.out_proj.{rest}", "model.decoder.layers.{i}.self_attn.o_proj.{rest}"),
    ("decoder.decoder.layers.{i}.norm1.{rest}", "model.decoder.layers.{i}.self_attn_layer_norm.{rest}"),
    ("decoder.decoder.layers.{i}.cross_attn.num_points_scale", "model.decoder.layers.{i}.encoder_attn.n_points_scale"),
    ("decoder.decoder.layers.{i}.cross_attn.{rest}", "model.decoder.layers.{i}.encoder_attn.{rest}"),
    ("decoder.decoder.layers.{i}.norm2.{rest}", "model.decoder.layers.{i}.encoder_attn_layer_norm.{rest}"),
    ("decoder.decoder.layers.{i}.linear1.{rest}", "model.decoder.layers.{i}.mlp.fc1.{rest}"),
    ("decoder.decoder.layers.{i}.linear2.{rest}", "model.decoder.layers.{i}.mlp.fc2.{rest}"),
    ("decoder.decoder.layers.{i}.norm3.{rest}", "model.decoder.layers.{i}.final_layer_norm.{rest}"),
]
# nn.MultiheadAttention keeps q, k, v stacked in one in_proj tensor; transformers has three projections.
IN_PROJ: list[tuple[str, str]] = [
    ("encoder.encoder.{i}.layers.{j}.self_attn.in_proj_{kind}", "model.encoder.aifi.{i}.layers.{j}.self_attn.{qkv}_proj.{kind}"),
    ("decoder.decoder.layers.{i}.self_attn.in_proj_{kind}", "model.decoder.layers.{i}.self_attn.{qkv}_proj.{kind}"),
]
_DROPPED = re.compile(r"decoder\.(anchors|valid_mask)$|.*num_batches_tracked$")
_DECODER_INDEXED = re.compile(r"decoder\.(?:decoder\.layers|dec_score_head|dec_bbox_head)\.(\d+)\.")

# placeholder: (regex on the authors' side, regex on the transformers side, authors -> transformers, inverse)
_FIELDS = {
    "i": (r"\d+", r"\d+", str, str), "j": (r"\d+", r"\d+", str, str), "rest": (r".+", r".+", str, str),
    "kind": (r"weight|bias", r"weight|bias", str, str), "qkv": (None, r"[qkv]", str, str),
    "stem": (r"[1-9]", r"[0-8]", lambda v: str(int(v) - 1), lambda v: str(int(v) + 1)),
    "br": (r"[abc]", r"[012]", lambda v: str("abc".index(v)), lambda v: "abc"[int(v)]),
}


def _compile(template: str, side: int) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)
    rx = "".join(re.escape(p) if n % 2 == 0 else f"(?P<{p}>{_FIELDS[p][side]})" for n, p in enumerate(parts))
    return re.compile(rx)


_FORWARD = [(_compile(a, 0), h) for a, h in RULES]
_INVERSE = [(_compile(h, 1), a) for a, h in RULES]
_IN_PROJ_FORWARD = [(_compile(a, 0), h) for a, h in IN_PROJ]
_IN_PROJ_INVERSE = [(_compile(h, 1), a) for a, h in IN_PROJ]


def _convert(m: re.Match, template: str, direction: int, **extra) -> str:
    values = {k: _FIELDS[k][2 + direction](v) for k, v in m.groupdict().items() if k != "qkv"}
    return template.format(**values, **extra)


def extract_state_dict(raw, source: Path | None = None) -> dict:
    """The model weights of a training checkpoint: the EMA weights when present (what the releases evaluate),
    else 'model', else the dict itself when it is already a state dict."""
    if isinstance(raw, dict) and isinstance(raw.get("ema"), dict) and isinstance(raw["ema"].get("module"), dict):
        return raw["ema"]["module"]
    if isinstance(raw, dict) and isinstance(raw.get("model"), dict):
        return raw["model"]
    if isinstance(raw, dict) and raw and all(hasattr(v, "shape") for v in raw.values()):
        return raw
    raise InputError("no state dict in the checkpoint (expected 'ema.module', 'model' or a plain state dict)", source)


def to_transformers(raw, source: Path | None = None, decoder_layers: int | None = None) -> dict:
    """The authors' checkpoint -> a state dict with transformers key names. Keys that fit no rule are an error
    naming them (a checkpoint of another architecture must not load half-way)."""
    state = extract_state_dict(raw, source)
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    out, unknown = {}, []
    for key, value in state.items():
        if _DROPPED.match(key):
            continue
        m = _DECODER_INDEXED.match(key)
        if m and decoder_layers is not None and int(m.group(1)) >= decoder_layers:
            continue
        stacked = next(((m, t) for rx, t in _IN_PROJ_FORWARD if (m := rx.fullmatch(key))), None)
        if stacked:
            for part, chunk in zip("qkv", value.chunk(3, dim=0)):
                out[_convert(stacked[0], stacked[1], 0, qkv=part)] = chunk.clone()
            continue
        plain = next(((m, t) for rx, t in _FORWARD if (m := rx.fullmatch(key))), None)
        if plain:
            out[_convert(plain[0], plain[1], 0)] = value
        else:
            unknown.append(key)
    if unknown:
        raise InputError(f"{len(unknown)} keys are not RT-DETR keys of the authors' layout (e.g. {unknown[:3]})",
                         source)
    return out


def to_original(state: dict) -> dict:
    """transformers RT-DETR state dict -> the authors' key layout (v2 spellings)."""
    import torch

    out, stacks = {}, {}
    for key, value in state.items():
        if key.startswith(("class_embed.", "bbox_embed.")):      # v2's tied copies of the decoder heads
            continue
        stacked = next(((m, t) for rx, t in _IN_PROJ_INVERSE if (m := rx.fullmatch(key))), None)
        if stacked:
            name = _convert(stacked[0], stacked[1], 1)
            stacks.setdefault(name, {})[stacked[0].group("qkv")] = value
            continue
        plain = next(((m, t) for rx, t in _INVERSE if (m := rx.fullmatch(key))), None)
        if plain is None:
            raise KeyError(f"no authors' name for {key}")
        out[_convert(plain[0], plain[1], 1)] = value
    for name, parts in stacks.items():
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out
