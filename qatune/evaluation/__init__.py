"""Evaluation orchestration: a trained run on data -> the task's metrics and prediction files."""
