"""dsm.train.outputs: where a run's files are published, staged and fetched (local folders here;
a bucket in tests/train/test_remote.py)."""

from dsm.plumbing.store import Location
from dsm.train.outputs import BEST_FILE, CONFIG_FILE, MODEL_FILE, PUBLISHED, RunOutputs


def test_a_run_without_storage_publishes_in_its_own_folder(tmp_path):
    run_dir = tmp_path / "runs" / "r"
    out = RunOutputs.of("r", run_dir, None)
    assert out.out == Location.of(run_dir) and out.is_local and out.staging_dir == run_dir
    assert RunOutputs.of("r", run_dir, Location.of(tmp_path / "runs")) == out  # storage that is the same place
    run_dir.mkdir(parents=True)
    (run_dir / MODEL_FILE).write_bytes(b"m")
    out.publish(run_dir / MODEL_FILE)
    out.fetch(run_dir)  # nothing to copy onto itself
    assert (run_dir / MODEL_FILE).read_bytes() == b"m" and out.model == Location.of(run_dir / MODEL_FILE)


def test_outputs_published_in_another_folder_are_fetched_into_the_run_folder(tmp_path):
    run_dir, shared = tmp_path / "ws" / "runs" / "r", tmp_path / "shared"
    out = RunOutputs.of("r", run_dir, Location.of(shared))
    assert out.out == Location.of(shared / "r") and out.staging_dir == shared / "r"  # rank 0 writes there
    out.staging_dir.mkdir(parents=True)
    for name in (MODEL_FILE, CONFIG_FILE):
        (out.staging_dir / name).write_text(name)
    out.fetch(run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == sorted([MODEL_FILE, CONFIG_FILE])
    assert (run_dir / MODEL_FILE).read_text() == MODEL_FILE
    assert set(PUBLISHED) == {MODEL_FILE, BEST_FILE, CONFIG_FILE}
