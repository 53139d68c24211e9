"""Data: WebDataset shards with a manifest, the built-in datasets, converters, and the streams.

Modules (each imports its heavy dependencies itself; importing ``dsm.data`` is cheap):

- :mod:`dsm.data.images`: PNG encode/decode, box down-sampling, grayscale (uint8, HWC).
- :mod:`dsm.data.shards`: the shard writer (atomic renames), the manifest, reading one shard.
- :mod:`dsm.data.sources`: the built-in datasets (``digits``, ``fashion-mnist``, ``mnist``,
  ``patches``) and :func:`~dsm.data.sources.prepare`.
- :mod:`dsm.data.convert`: the official downsampled ImageNet (pickle or .npz) and image folders.
- :mod:`dsm.data.verify`: shards against their manifest, every problem named by file.
- :mod:`dsm.data.npy`: a ``.npy`` array of vectors or images as a dataset.
- :mod:`dsm.data.pickles`: reading the official ImageNet pickles without running their code.
- :mod:`dsm.data.inputs`: what ``dsm normalize`` and ``dsm score`` read (shards, ``.npy``, an
  image folder, a URL), in pieces.
- :mod:`dsm.data.stream`: the per-worker training stream and the in-order evaluation stream.
- :mod:`dsm.data.cli`: ``dsm data prepare | convert | verify | list``.

docs/data.md describes the shard format, the manifest schema and the stream's guarantees.
"""
