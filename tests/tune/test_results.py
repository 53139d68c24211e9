"""The sweep's outputs from synthetic trial results (no Ray)."""

import csv
import math

import yaml

from dsm.tune.results import TrialResult, best, status_of, write_best_config, write_figure, write_table
from dsm.tune.spec import SweepSpec


def _results():
    return [
        TrialResult("s-t000", {"optim.lr": 1e-3, "model.form": "inner"}, 3.2, 100, 100, "completed",
                    {"steps": 100, "name": "s-t000"}),
        TrialResult("s-t001", {"optim.lr": 1e-2, "model.form": "inner+c"}, 2.9, 100, 100, "completed", {"steps": 100}),
        TrialResult("s-t002", {"optim.lr": 1e-9, "model.form": "inner"}, 1.0, 20, 100, "stopped_early", {"steps": 100}),
        TrialResult("s-t003", {"optim.lr": 5e-3, "model.form": "inner"}, math.nan, 0, 100, "error", None, "boom"),
    ]


def test_best_prefers_completed_trials_and_respects_mode():
    r = _results()
    assert best(r, "min").name == "s-t001"  # t002's lower value was at step 20: not comparable
    assert best(r, "max").name == "s-t000"
    assert best([r[2], r[3]], "min").name == "s-t002"  # nothing completed: the best that reported
    assert best([r[3]], "min") is None
    assert status_of(100, 100, False) == "completed" and status_of(20, 100, False) == "stopped_early"
    assert status_of(100, 100, True) == "error"


def test_table_figure_and_best_config(tmp_path):
    r = _results()
    spec = SweepSpec(base="x.yaml", space={"optim.lr": {"loguniform": [1e-9, 1e-2]},
                                           "model.form": {"choice": ["inner", "inner+c"]}})
    rows = list(csv.DictReader(open(write_table(r, "eval/nll_bpd", tmp_path / "t.csv"))))
    assert [row["trial"] for row in rows] == ["s-t000", "s-t001", "s-t002", "s-t003"]
    assert rows[2]["status"] == "stopped_early" and rows[3]["error"] == "boom" and rows[1]["model.form"] == "inner+c"
    png = write_figure(r, spec, tmp_path / "f.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    cfg = yaml.safe_load(write_best_config(r[0], tmp_path / "best.yaml").read_text())
    assert cfg == {"steps": 100}  # the run name is dropped: dsm train derives its own


def test_trial_errors_are_summarized_to_their_cause():
    from dsm.tune.run import _error_summary

    wrapped = RuntimeError(
        "ray.exceptions.RayTaskError(WorkerGroupError): \x1b[36mray::ImplicitFunc.train()\x1b[39m (pid=1)\n"
        "  File \"loop.py\", line 3\nray.train.WorkerGroupError: Training failed due to worker errors:\n"
        "[Rank 0,1 Error Snippet]:\nRuntimeError: Expected to have finished reduction in the prior iteration\n"
        " Parameter indices which did not receive grad for rank 0: 25")
    assert _error_summary(wrapped) == "RuntimeError: Expected to have finished reduction in the prior iteration"
    assert _error_summary(ValueError("plain")) == "plain"
