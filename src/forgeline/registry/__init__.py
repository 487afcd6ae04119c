"""The model registry: store location, model references, registration and the champion gate."""
