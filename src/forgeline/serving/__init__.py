"""HTTP serving of a registered model: micro-batching, registry hot swap, drain."""
