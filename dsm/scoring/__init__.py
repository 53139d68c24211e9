"""Scoring: normalize -> score -> summary. ``inputs`` (what is read), ``columns`` (per-image math,
no Ray), ``job`` (the Ray Data job, resumable parquet parts), ``summary`` (tables, figures),
``normalization`` (``dsm normalize``), ``cli``."""
