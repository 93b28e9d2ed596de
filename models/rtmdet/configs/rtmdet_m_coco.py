# RTMDet-m, COCO, 640x640 (mmdet configs/rtmdet/rtmdet_m_8xb32-300e_coco.py: l with smaller factors)
_base_ = './rtmdet_l_coco.py'
model = dict(
    backbone=dict(deepen_factor=0.67, widen_factor=0.75),
    neck=dict(in_channels=[192, 384, 768], out_channels=192, num_csp_blocks=2),
    bbox_head=dict(in_channels=192, feat_channels=192))
