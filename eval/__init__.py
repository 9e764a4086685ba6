"""Benchmark datasets, evaluation runs and their reports (the metrics are retrieval.search.metrics)."""
