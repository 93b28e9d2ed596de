"""Detections -> the 12 COCO stats (pycocotools, faster-coco-eval, or image by image during the run)."""
