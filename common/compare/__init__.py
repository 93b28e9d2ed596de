"""Judging a candidate against FP32: tensors and detections, the FP16 range check and localisation, INT8 sensitivity."""
