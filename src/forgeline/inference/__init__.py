"""What a registered model ships and runs: ONNX Runtime sessions, CUDA graphs, the MLflow pyfunc.

Imports numpy, pandas, onnxruntime, tokenizers and mlflow only — never torch, transformers or another
forgeline package — because this folder is the model's whole code (``code_paths``) and serving images
carry no torch (tests/inference/test_isolation.py loads a model with torch blocked).
"""
