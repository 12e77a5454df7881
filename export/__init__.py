"""Trained models -> ONNX graphs with parity reports -> a Triton model repository."""
