# RTMDet-x, COCO, 640x640 (mmdet configs/rtmdet/rtmdet_x_8xb32-300e_coco.py)
_base_ = './rtmdet_l_coco.py'
model = dict(
    backbone=dict(deepen_factor=1.33, widen_factor=1.25),
    neck=dict(in_channels=[320, 640, 1280], out_channels=320, num_csp_blocks=4),
    bbox_head=dict(in_channels=320, feat_channels=320))
