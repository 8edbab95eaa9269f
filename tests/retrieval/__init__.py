"""Retrieval tests; a package so that its test_metrics.py does not clash with tests/evaluation/test_metrics.py."""
