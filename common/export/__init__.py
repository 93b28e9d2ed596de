"""Checkpoint -> ONNX -> simplified, cleaned ONNX, shared by every model's export.py."""
