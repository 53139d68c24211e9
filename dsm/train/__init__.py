"""Distributed training on Ray Train: config -> build -> loop (per worker) -> state / export.

- :mod:`dsm.train.config`: the typed YAML config (``configs/*.yaml``);
- :mod:`dsm.train.build`: data resolution and model / loss / optimizer assembly (no Ray);
- :mod:`dsm.train.loop`: the function every Ray Train worker runs;
- :mod:`dsm.train.evaluate`: held-out metrics (no Ray);
- :mod:`dsm.train.state`: checkpoint contents (no Ray);
- :mod:`dsm.train.runlog`: MLflow logging from rank 0;
- :mod:`dsm.train.run`: the ``dsm train`` driver.
"""
