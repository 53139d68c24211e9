"""MLflow logging for a training run: the driver opens (or finds) the run
(dsm.runtime.tracking.open_run), rank 0 logs to it.

Metric rows are buffered and written after each checkpoint is persisted, and every flush
ends with a ``progress/step`` marker. A resumed run reads the marker and drops rows at or
below it, so restarts never duplicate steps; rows not yet written when a checkpoint was taken
travel inside the checkpoint, so a crash between the two loses nothing.

MLflow failures never stop training: the first one is reported on stderr, and logging is
switched off for the rest of the process.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

MARKER = "progress/step"


class RunLog:
    """Rank 0's handle on the run. ``enabled`` is False without a run id or after a failure."""

    def __init__(self, run_id: str | None, tracking_uri: str):
        self.run_id, self.tracking_uri = run_id, tracking_uri
        self.enabled = run_id is not None
        self.logged_through = -1
        self._client = None

    def _call(self, what: str, fn, *args, **kwargs) -> Any:
        if not self.enabled:
            return None
        try:
            if self._client is None:
                from mlflow.tracking import MlflowClient

                from dsm.runtime.tracking import quick_fail_http

                quick_fail_http()
                self._client = MlflowClient(self.tracking_uri)
            return fn(self._client, *args, **kwargs)
        except Exception as e:  # noqa: BLE001
            self.enabled = False
            # sys.stderr.write, not print: Ray Train's patched print would log it twice
            sys.stderr.write(f"dsm: MLflow {what} failed ({type(e).__name__}: {e}); training goes on, "
                             "MLflow logging is off for the rest of this run\n")
            sys.stderr.flush()
            return None

    def resume(self) -> int:
        """Read the last flushed step (the marker's maximum); -1 for a fresh run."""
        hist = self._call("read", lambda c: c.get_metric_history(self.run_id, MARKER))
        self.logged_through = max((int(m.step) for m in hist or []), default=-1)
        return self.logged_through

    def flush(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        """Write metric rows (step, {name: value}) newer than what was flushed, then the marker."""
        from mlflow.entities import Metric

        rows = [(s, m) for s, m in rows if s > self.logged_through]
        if not rows or not self.enabled:
            return
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, s) for s, m in rows for k, v in m.items()]
        last = max(s for s, _ in rows)
        metrics.append(Metric(MARKER, float(last), now, last))
        for i in range(0, len(metrics), 1000):  # log_batch's limit
            if self._call("logging", lambda c, b: c.log_batch(self.run_id, metrics=b), metrics[i:i + 1000]) is None \
                    and not self.enabled:
                return
        self.logged_through = last

    def tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self._call("tagging", lambda c: c.set_tag(self.run_id, k, v))  # noqa: B023 - called at once, in this iteration

    def artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call("artifact upload", lambda c: c.log_artifact(self.run_id, str(path), artifact_path))

    def finish(self, status: str = "FINISHED") -> None:
        self._call("closing the run", lambda c: c.set_terminated(self.run_id, status))
