"""Batch scoring of files with a registered model (``forgeline score``)."""
