"""Scoring of QA predictions (SQuAD v1.1 / v2.0 official metrics)."""
