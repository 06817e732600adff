"""Running trained models: the loader behind ``qatune.load`` and the runners (PyTorch, ONNX Runtime)."""
