"""From a trained PyTorch model to ONNX files: export (+ parity) and the compressed variants."""
