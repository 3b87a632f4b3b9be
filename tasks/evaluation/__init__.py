"""Scoring: data sets, metrics, and the one definition of verdicts and stages."""
