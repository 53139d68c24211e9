"""A training run's output files: their names, where they are published, and how they get there.

A run has a local folder on the driver, ``<workspace>/runs/<name>`` (a sweep's trial:
``<sweep>/runs/<name>``), and a place where Ray Train keeps its checkpoints and rank 0 publishes
the outputs: that folder itself, or ``<storage>/<name>`` with ``--storage`` (a bucket). For a
remote place rank 0 writes each file into a local staging folder on its node and uploads it
whole; the driver then fetches the published files into the run folder.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dsm.plumbing.store import Location

MODEL_FILE = "model.pt"  # the last step's bundle, normalized; its publication means the run finished
BEST_FILE = "model-best.pt"  # the bundle of the lowest held-out NLL (SELECTED_BY in dsm.train.loop)
CONFIG_FILE = "config.yaml"  # the resolved training config
ERROR_LOG = "error.log"  # in the driver's run folder: the last failure's full traceback
PUBLISHED = (MODEL_FILE, BEST_FILE, CONFIG_FILE)


@dataclass(frozen=True)
class RunOutputs:
    """Where one run's outputs are published (``out``: a folder or a URL), seen from any node."""

    name: str
    out: Location

    @classmethod
    def of(cls, name: str, run_dir: Path, storage: Location | None) -> RunOutputs:
        """The outputs of run ``name`` whose driver-side folder is ``run_dir``: published there, or
        under ``storage`` (a folder or URL holding every run's folder) when that is elsewhere."""
        out = storage / name if storage is not None else Location.of(run_dir)
        return cls(name, Location.of(run_dir) if out == Location.of(run_dir) else out)

    @property
    def is_local(self) -> bool:
        return self.out.is_local

    @property
    def model(self) -> Location:
        """Where the finished run's model.pt is published."""
        return self.out / MODEL_FILE

    @property
    def staging_dir(self) -> Path:
        """Where rank 0 writes its outputs: the published folder itself, or (remote storage) a local
        staging folder on this node, from which :meth:`publish` uploads them."""
        if self.is_local:
            return self.out.path
        return Path(tempfile.gettempdir()) / f"dsm-run-{self.name}"

    def publish(self, path: Path) -> None:
        """Upload a finished output file to remote storage (one upload: atomic); locally it is there."""
        if not self.is_local:
            (self.out / path.name).upload(path)

    def staged(self, name: str) -> Path:
        """``staging_dir / name``, fetched from remote storage when this node has no copy (a run
        resumed on another node published it from there), so that MLflow gets it too."""
        path = self.staging_dir / name
        if not path.is_file() and not self.is_local and name in self.out.listing():
            path.write_bytes((self.out / name).read_bytes())
        return path

    def discard_staging(self) -> None:
        """Remove the local staging folder (remote storage) once the run has ended: what it held
        is published or logged to MLflow, and a later run of the same name starts it afresh."""
        if not self.is_local:
            shutil.rmtree(self.staging_dir, ignore_errors=True)

    def fetch(self, run_dir: Path) -> None:
        """Copy what rank 0 published (to a bucket, or a shared folder elsewhere) into the driver's
        ``run_dir``, where the driver registers and reports the model. Nothing to do when the
        outputs are published in ``run_dir`` itself."""
        if self.out == Location.of(run_dir):
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        found = self.out.listing()
        for name in PUBLISHED:
            if name in found:
                (run_dir / name).write_bytes((self.out / name).read_bytes())
