"""Benchmark datasets, retrieval metrics, evaluation runs and their reports."""
