"""Scoring against a reference or a cohort: metrics, quality checks, proton range, the report."""
