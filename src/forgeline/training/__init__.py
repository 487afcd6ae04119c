"""Fine-tuning: the classifier builder, the training loop, pruning, distillation and the fused attention
kernel."""

from typing import Any

Model = Any
"""A transformers model (``torch.nn.Module``): its submodules and config keys are named by architecture and
found at run time (``model.bert.encoder.layer``, ``model.config.hidden_size``), which no static type states."""
