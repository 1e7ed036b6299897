"""Trained models out of bicycle: inference weights (safetensors) and ONNX."""
