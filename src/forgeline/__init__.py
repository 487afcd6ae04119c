"""forgeline: validate, fine-tune, evaluate, compress, export to ONNX and register text classifiers.

This module stays import-light: a registered model ships ``forgeline/inference`` with this file and
nothing else, so nothing here may import torch, transformers, prefect or another forgeline package.
"""

__version__ = "0.1.0"
