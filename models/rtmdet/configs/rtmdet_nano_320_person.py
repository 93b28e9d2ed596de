# RTMDet-nano person detector, 320x320: the inference part of mmpose's
# projects/rtmpose/rtmdet/person/rtmdet_nano_320-8xb32_coco-person.py (builds on mmdet's rtmdet_l config;
# checkpoint rtmdet_nano_8xb32-100e_coco-obj365-person-05d8511e.pth). Depthwise convs, one class, per-stride convs.
_base_ = './rtmdet_l_coco.py'
model = dict(
    backbone=dict(deepen_factor=0.33, widen_factor=0.25, use_depthwise=True),
    neck=dict(in_channels=[64, 128, 256], out_channels=64, num_csp_blocks=1, use_depthwise=True),
    bbox_head=dict(in_channels=64, feat_channels=64, share_conv=False, exp_on_reg=False, use_depthwise=True,
                   num_classes=1))
img_scale = (320, 320)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='Pad', size=img_scale, pad_val=dict(img=(114, 114, 114))),
    dict(type='PackDetInputs'),
]
