"""Data readers: every supported format (JSON, JSON Lines, CSV, Parquet, save_to_disk, hub) read into
flat records; each task validates and repairs its own records (its schema lives with the task)."""

from qatune.data.readers import Record, RecordSchema, check_max_samples, iter_flat, open_records, read_json

__all__ = ["Record", "RecordSchema", "check_max_samples", "iter_flat", "open_records", "read_json"]
