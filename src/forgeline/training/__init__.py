"""Fine-tuning: the classifier builder, the training loop, evaluation and the fused attention kernel."""
