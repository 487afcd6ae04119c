"""Custom GPU kernels used by training only (never by a registered model)."""
