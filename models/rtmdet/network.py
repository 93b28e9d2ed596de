"""RTMDet in plain PyTorch: CSPNeXt backbone, CSPNeXt PAFPN neck, RTMDet separated-BN head.

Written for this suite so that an mmdet checkpoint can be exported where mmcv's compiled ops are missing. Module
and attribute names follow mmdet's (ConvModule's `conv` / `bn`, `stage1.0`, `reduce_layers.0`, `rtm_cls.0`, ...)
so an mmdet state dict loads key for key; the arguments are those of mmdet's config dicts (`deepen_factor`,
`widen_factor`, `use_depthwise`, `exp_on_reg`, ...), with mmdet's defaults where a config leaves one out.

The network stops at the head's raw outputs: per stride, class logits [B, C, H, W] and box distances
[B, 4, H, W] (left, top, right, bottom) already multiplied by the stride, which is what the suite's `rtmdet_raw`
decoder (models/rtmdet/decode.py) reads.
"""
from __future__ import annotations

import torch
from torch import nn

# mmdet's defaults for modules whose config gives no norm_cfg / act_cfg
DEFAULT_NORM = {"type": "BN", "momentum": 0.03, "eps": 0.001}
DEFAULT_ACT = {"type": "SiLU"}

# CSPNeXt stages: in channels, out channels, CSP blocks, identity shortcut in the blocks, SPP before the CSP layer
ARCH_SETTINGS = {
    "P5": [(64, 128, 3, True, False), (128, 256, 6, True, False), (256, 512, 6, True, False),
           (512, 1024, 3, False, True)],
    "P6": [(64, 128, 3, True, False), (128, 256, 6, True, False), (256, 512, 6, True, False),
           (512, 768, 3, True, False), (768, 1024, 3, False, True)],
}

NORM_TYPES = ("BN", "SyncBN", "BN2d")
ACTIVATIONS = {"SiLU": nn.SiLU, "Swish": nn.SiLU, "ReLU": nn.ReLU}


class UnsupportedConfig(ValueError):
    """A config value this implementation does not cover (turned into a ConfigError naming the file)."""


def _norm(channels: int, norm_cfg: dict) -> nn.BatchNorm2d:
    kind = norm_cfg.get("type", "BN")
    if kind not in NORM_TYPES:
        raise UnsupportedConfig(f"norm_cfg type '{kind}' (supported: {', '.join(NORM_TYPES)})")
    # a config dict replaces mmdet's default dict whole, so a missing eps means torch's default, not 0.001
    return nn.BatchNorm2d(channels, eps=norm_cfg.get("eps", 1e-5), momentum=norm_cfg.get("momentum", 0.1))


def _act(act_cfg: dict) -> nn.Module:
    kind = act_cfg.get("type", "SiLU")
    if kind not in ACTIVATIONS:
        raise UnsupportedConfig(f"act_cfg type '{kind}' (supported: {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[kind]()


class ConvBN(nn.Module):
    """Conv (no bias) -> BN -> activation; the `conv` / `bn` names of mmcv's ConvModule."""

    def __init__(self, cin, cout, k, stride=1, groups=1, *, norm_cfg, act_cfg):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
        self.bn = _norm(cout, norm_cfg)
        self.activate = _act(act_cfg)

    def forward(self, x):
        return self.activate(self.bn(self.conv(x)))


class DepthwiseSeparable(nn.Module):
    """Depthwise k x k ConvBN then pointwise 1 x 1 ConvBN (mmcv's DepthwiseSeparableConvModule names)."""

    def __init__(self, cin, cout, k, stride=1, *, norm_cfg, act_cfg):
        super().__init__()
        self.depthwise_conv = ConvBN(cin, cin, k, stride, groups=cin, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.pointwise_conv = ConvBN(cin, cout, 1, norm_cfg=norm_cfg, act_cfg=act_cfg)

    def forward(self, x):
        return self.pointwise_conv(self.depthwise_conv(x))


def conv_block(depthwise: bool):
    return DepthwiseSeparable if depthwise else ConvBN


class CSPNeXtBlock(nn.Module):
    def __init__(self, channels, add_identity, depthwise, *, norm_cfg, act_cfg, kernel_size=5):
        super().__init__()
        # CSPLayer builds its blocks with expansion 1.0: hidden channels = channels
        self.conv1 = conv_block(depthwise)(channels, channels, 3, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.conv2 = DepthwiseSeparable(channels, channels, kernel_size, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.add_identity = add_identity

    def forward(self, x):
        out = self.conv2(self.conv1(x))
        return out + x if self.add_identity else out


class ChannelAttention(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(channels, channels, 1, bias=True)
        self.act = nn.Hardsigmoid()

    def forward(self, x):
        return x * self.act(self.fc(self.global_avgpool(x)))


class CSPLayer(nn.Module):
    def __init__(self, cin, cout, *, expand_ratio, num_blocks, add_identity, depthwise, channel_attention,
                 norm_cfg, act_cfg):
        super().__init__()
        mid = int(cout * expand_ratio)
        kw = {"norm_cfg": norm_cfg, "act_cfg": act_cfg}
        self.main_conv = ConvBN(cin, mid, 1, **kw)
        self.short_conv = ConvBN(cin, mid, 1, **kw)
        self.final_conv = ConvBN(2 * mid, cout, 1, **kw)
        self.blocks = nn.Sequential(*[CSPNeXtBlock(mid, add_identity, depthwise, **kw) for _ in range(num_blocks)])
        self.attention = ChannelAttention(2 * mid) if channel_attention else None

    def forward(self, x):
        # short branch first, as mmdet runs it: exported graphs then list their convs in mmdet's order
        short = self.short_conv(x)
        y = torch.cat((self.blocks(self.main_conv(x)), short), dim=1)
        if self.attention is not None:
            y = self.attention(y)
        return self.final_conv(y)


class SPPBottleneck(nn.Module):
    def __init__(self, cin, cout, kernel_sizes, *, norm_cfg, act_cfg):
        super().__init__()
        mid = cin // 2
        self.conv1 = ConvBN(cin, mid, 1, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.poolings = nn.ModuleList([nn.MaxPool2d(k, stride=1, padding=k // 2) for k in kernel_sizes])
        self.conv2 = ConvBN(mid * (len(kernel_sizes) + 1), cout, 1, norm_cfg=norm_cfg, act_cfg=act_cfg)

    def forward(self, x):
        x = self.conv1(x)
        return self.conv2(torch.cat([x] + [pool(x) for pool in self.poolings], dim=1))


class CSPNeXt(nn.Module):
    def __init__(self, arch="P5", deepen_factor=1.0, widen_factor=1.0, out_indices=(2, 3, 4), use_depthwise=False,
                 expand_ratio=0.5, arch_ovewrite=None, spp_kernal_sizes=(5, 9, 13), channel_attention=True,
                 norm_cfg=None, act_cfg=None, conv_cfg=None):
        super().__init__()
        if conv_cfg is not None:
            raise UnsupportedConfig(f"backbone conv_cfg {conv_cfg} (only plain Conv2d)")
        if arch not in ARCH_SETTINGS and not arch_ovewrite:
            raise UnsupportedConfig(f"backbone arch '{arch}' (supported: {', '.join(ARCH_SETTINGS)})")
        setting = arch_ovewrite or ARCH_SETTINGS[arch]
        kw = {"norm_cfg": norm_cfg or DEFAULT_NORM, "act_cfg": act_cfg or DEFAULT_ACT}
        stem = int(setting[0][0] * widen_factor)
        self.stem = nn.Sequential(ConvBN(3, stem // 2, 3, 2, **kw), ConvBN(stem // 2, stem // 2, 3, **kw),
                                  ConvBN(stem // 2, stem, 3, **kw))
        self.out_indices = tuple(out_indices)
        self.layers = ["stem"]
        for i, (cin, cout, blocks, identity, spp) in enumerate(setting):
            cin, cout = int(cin * widen_factor), int(cout * widen_factor)
            stage = [conv_block(use_depthwise)(cin, cout, 3, 2, **kw)]
            if spp:
                stage.append(SPPBottleneck(cout, cout, spp_kernal_sizes, **kw))
            n_blocks = max(round(blocks * deepen_factor), 1)
            stage.append(CSPLayer(cout, cout, expand_ratio=expand_ratio, num_blocks=n_blocks, add_identity=identity,
                                  depthwise=use_depthwise, channel_attention=channel_attention, **kw))
            self.add_module(f"stage{i + 1}", nn.Sequential(*stage))
            self.layers.append(f"stage{i + 1}")

    def forward(self, x):
        outs = []
        for i, name in enumerate(self.layers):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        return outs


class CSPNeXtPAFPN(nn.Module):
    def __init__(self, in_channels, out_channels, num_csp_blocks=3, use_depthwise=False, expand_ratio=0.5,
                 upsample_cfg=None, norm_cfg=None, act_cfg=None, conv_cfg=None):
        super().__init__()
        if conv_cfg is not None:
            raise UnsupportedConfig(f"neck conv_cfg {conv_cfg} (only plain Conv2d)")
        upsample_cfg = dict(upsample_cfg or {"scale_factor": 2, "mode": "nearest"})
        kw = {"norm_cfg": norm_cfg or DEFAULT_NORM, "act_cfg": act_cfg or DEFAULT_ACT}
        csp = {"expand_ratio": expand_ratio, "num_blocks": num_csp_blocks, "add_identity": False,
               "depthwise": use_depthwise, "channel_attention": False, **kw}
        conv = conv_block(use_depthwise)
        n = len(in_channels)
        self.upsample = nn.Upsample(**upsample_cfg)
        self.reduce_layers, self.top_down_blocks = nn.ModuleList(), nn.ModuleList()
        for idx in range(n - 1, 0, -1):
            self.reduce_layers.append(ConvBN(in_channels[idx], in_channels[idx - 1], 1, **kw))
            self.top_down_blocks.append(CSPLayer(in_channels[idx - 1] * 2, in_channels[idx - 1], **csp))
        self.downsamples, self.bottom_up_blocks = nn.ModuleList(), nn.ModuleList()
        for idx in range(n - 1):
            self.downsamples.append(conv(in_channels[idx], in_channels[idx], 3, 2, **kw))
            self.bottom_up_blocks.append(CSPLayer(in_channels[idx] * 2, in_channels[idx + 1], **csp))
        self.out_convs = nn.ModuleList([conv(c, out_channels, 3, **kw) for c in in_channels])

    def forward(self, inputs):
        n = len(inputs)
        # top-down: reduce the coarser map, upsample, fuse with the finer one
        inner = [inputs[-1]]
        for i, idx in enumerate(range(n - 1, 0, -1)):
            high = self.reduce_layers[i](inner[0])
            inner[0] = high
            inner.insert(0, self.top_down_blocks[i](torch.cat([self.upsample(high), inputs[idx - 1]], dim=1)))
        # bottom-up: downsample the finer output, fuse with the top-down map of the next level
        outs = [inner[0]]
        for idx in range(n - 1):
            outs.append(self.bottom_up_blocks[idx](torch.cat([self.downsamples[idx](outs[-1]), inner[idx + 1]], 1)))
        return [conv(x) for conv, x in zip(self.out_convs, outs)]


class RTMDetSepBNHead(nn.Module):
    """Per-stride conv towers with their own BN; the convs themselves shared across strides when share_conv."""

    def __init__(self, num_classes, in_channels, feat_channels=256, stacked_convs=4, share_conv=True,
                 use_depthwise=False, pred_kernel_size=1, exp_on_reg=False, with_objectness=True,
                 anchor_generator=None, norm_cfg=None, act_cfg=None, conv_cfg=None):
        super().__init__()
        if with_objectness:
            raise UnsupportedConfig("bbox_head with_objectness=True (RTMDet detectors set it False; mmdet's "
                                    "default is True, so the config must say with_objectness=False)")
        if conv_cfg is not None:
            raise UnsupportedConfig(f"bbox_head conv_cfg {conv_cfg} (only plain Conv2d)")
        if share_conv and use_depthwise:
            raise UnsupportedConfig("bbox_head share_conv=True with use_depthwise=True")
        generator = dict(anchor_generator or {"offset": 0, "strides": [8, 16, 32]})
        if generator.get("type", "MlvlPointGenerator") != "MlvlPointGenerator":
            raise UnsupportedConfig(f"anchor_generator {generator.get('type')} (RTMDet uses MlvlPointGenerator)")
        if generator.get("offset", 0.5) != 0:
            raise UnsupportedConfig(f"anchor_generator offset {generator.get('offset', 0.5)} (rtmdet_raw decoding "
                                    "puts priors at offset 0)")
        self.strides = [int(s[0] if isinstance(s, (list, tuple)) else s) for s in generator.get("strides", [8, 16, 32])]
        self.num_classes, self.exp_on_reg = num_classes, exp_on_reg
        kw = {"norm_cfg": norm_cfg or DEFAULT_NORM, "act_cfg": act_cfg or DEFAULT_ACT}
        conv = conv_block(use_depthwise)
        self.cls_convs, self.reg_convs = nn.ModuleList(), nn.ModuleList()
        self.rtm_cls, self.rtm_reg = nn.ModuleList(), nn.ModuleList()
        for _ in self.strides:
            chans = [in_channels] + [feat_channels] * (stacked_convs - 1)
            self.cls_convs.append(nn.ModuleList([conv(c, feat_channels, 3, **kw) for c in chans]))
            self.reg_convs.append(nn.ModuleList([conv(c, feat_channels, 3, **kw) for c in chans]))
            pad = pred_kernel_size // 2
            self.rtm_cls.append(nn.Conv2d(feat_channels, num_classes, pred_kernel_size, padding=pad))
            self.rtm_reg.append(nn.Conv2d(feat_channels, 4, pred_kernel_size, padding=pad))
        if share_conv:
            # one conv weight for every stride, a BN per stride: the checkpoint still lists the conv under
            # every stride's name (same tensor), so loading key for key works unchanged
            for level in range(1, len(self.strides)):
                for i in range(stacked_convs):
                    self.cls_convs[level][i].conv = self.cls_convs[0][i].conv
                    self.reg_convs[level][i].conv = self.reg_convs[0][i].conv

    def forward(self, feats):
        cls_scores, distances = [], []
        for level, (x, stride) in enumerate(zip(feats, self.strides)):
            cls_feat, reg_feat = x, x
            for layer in self.cls_convs[level]:
                cls_feat = layer(cls_feat)
            cls_scores.append(self.rtm_cls[level](cls_feat))
            for layer in self.reg_convs[level]:
                reg_feat = layer(reg_feat)
            reg = self.rtm_reg[level](reg_feat)
            distances.append((reg.exp() if self.exp_on_reg else reg) * stride)
        return cls_scores, distances


# Config keys that only matter for training (or name the mmdet type): accepted and not used. Any other key this
# implementation does not take is refused, so a setting that changes the network is never silently dropped.
TRAINING_ONLY = {"type", "init_cfg", "frozen_stages", "norm_eval", "loss_cls", "loss_bbox", "loss_centerness",
                 "train_cfg", "test_cfg", "bbox_coder", "use_sigmoid_cls"}


def _arguments(part: str, cfg: dict, cls) -> dict:
    import inspect
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "_ignored"}
    unknown = sorted(set(cfg) - accepted - TRAINING_ONLY)
    if unknown:
        raise UnsupportedConfig(f"model.{part} keys {unknown} (not implemented by the suite's {cls.__name__})")
    coder = cfg.get("bbox_coder")
    if coder and coder.get("type") != "DistancePointBBoxCoder":
        raise UnsupportedConfig(f"model.{part}.bbox_coder {coder.get('type')} (rtmdet_raw decodes distances)")
    return {k: v for k, v in cfg.items() if k in accepted}


class RTMDet(nn.Module):
    """backbone -> neck -> bbox_head; forward returns (cls per stride..., distances per stride...)."""

    def __init__(self, backbone: dict, neck: dict, bbox_head: dict):
        super().__init__()
        for part, cfg, kind in (("backbone", backbone, "CSPNeXt"), ("neck", neck, "CSPNeXtPAFPN"),
                                ("bbox_head", bbox_head, "RTMDetSepBNHead")):
            if cfg.get("type") != kind:
                raise UnsupportedConfig(f"model.{part}.type '{cfg.get('type')}' (supported: {kind})")
        self.backbone = CSPNeXt(**_arguments("backbone", backbone, CSPNeXt))
        self.neck = CSPNeXtPAFPN(**_arguments("neck", neck, CSPNeXtPAFPN))
        self.bbox_head = RTMDetSepBNHead(**_arguments("bbox_head", bbox_head, RTMDetSepBNHead))

    @property
    def strides(self):
        return self.bbox_head.strides

    def forward(self, x):
        cls_scores, distances = self.bbox_head(self.neck(self.backbone(x)))
        return (*cls_scores, *distances)
