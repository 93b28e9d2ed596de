"""Regression runs for CI: the matrix, baselines, verdicts and reports."""
