"""Benchmark harnesses behind `forgeline bench` and `forgeline loadtest` (results: benchmarks/results/)."""
