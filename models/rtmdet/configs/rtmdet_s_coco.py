# RTMDet-s, COCO, 640x640 (mmdet configs/rtmdet/rtmdet_s_8xb32-300e_coco.py: no exp on the box distances)
_base_ = './rtmdet_l_coco.py'
model = dict(
    backbone=dict(deepen_factor=0.33, widen_factor=0.5),
    neck=dict(in_channels=[128, 256, 512], out_channels=128, num_csp_blocks=1),
    bbox_head=dict(in_channels=128, feat_channels=128, exp_on_reg=False))
