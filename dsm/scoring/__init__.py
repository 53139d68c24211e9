"""Scoring: ``dsm normalize`` and ``dsm score``, the two commands that evaluate a trained model on
data. ``normalization`` (log Z into the bundle), ``columns`` (the per-image math, no Ray),
``job`` (the Ray Data job: resumable parquet parts), ``summary`` (tables and figures), ``cli``.
What a job reads comes from :mod:`dsm.data.inputs`."""
