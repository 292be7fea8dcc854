"""Export: PyTorch policy -> one ONNX step graph with explicit state, graph checks, parity, bundle."""
