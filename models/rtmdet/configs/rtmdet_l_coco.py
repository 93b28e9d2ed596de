# RTMDet-l, COCO 80 classes, 640x640: the inference part of mmdet's configs/rtmdet/rtmdet_l_8xb32-300e_coco.py
# (the model dict and test pipeline only; no training settings). Self-contained: it needs mmengine, not mmdet.
norm = dict(type='SyncBN')
act = dict(type='SiLU', inplace=True)
model = dict(
    type='RTMDet',
    data_preprocessor=dict(type='DetDataPreprocessor', mean=[103.53, 116.28, 123.675],
                           std=[57.375, 57.12, 58.395], bgr_to_rgb=False),
    backbone=dict(type='CSPNeXt', arch='P5', expand_ratio=0.5, deepen_factor=1, widen_factor=1,
                  channel_attention=True, norm_cfg=norm, act_cfg=act),
    neck=dict(type='CSPNeXtPAFPN', in_channels=[256, 512, 1024], out_channels=256, num_csp_blocks=3,
              expand_ratio=0.5, norm_cfg=norm, act_cfg=act),
    bbox_head=dict(type='RTMDetSepBNHead', num_classes=80, in_channels=256, stacked_convs=2, feat_channels=256,
                   anchor_generator=dict(type='MlvlPointGenerator', offset=0, strides=[8, 16, 32]),
                   bbox_coder=dict(type='DistancePointBBoxCoder'), with_objectness=False, exp_on_reg=True,
                   share_conv=True, pred_kernel_size=1, norm_cfg=norm, act_cfg=act),
    test_cfg=dict(nms_pre=30000, min_bbox_size=0, score_thr=0.001, nms=dict(type='nms', iou_threshold=0.65),
                  max_per_img=300))
img_scale = (640, 640)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='Pad', size=img_scale, pad_val=dict(img=(114, 114, 114))),
    dict(type='PackDetInputs'),
]
