"""``dsm report`` (figures and statistics of a ``dsm score`` output) and the ``dsm sample`` command.

``build`` reads the parquet parts and writes ``report.md``, PNGs and ``metrics.json``;
``figures`` draws them; ``cli`` registers both commands. The statistics live in the Ray-free
``dsm.stats.density`` and the sampler in ``dsm.core.sample``.
"""
