"""`dsm report` on a real `dsm score` output (an exact Gaussian fitted to 1200 digits), and `dsm sample`."""

import json
import math
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from dsm.cli import main
from dsm.report.build import SECTIONS, build_report

FIGURES = ("logp_hist.png", "most_probable.png", "least_probable.png", "deff.png", "deff_gap.png",
           "deff_reference_images.png", "logp_vs_sparsity.png")


def _last_line(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_report_has_every_section_and_logs_to_the_scoring_run(digits_scores, tmp_path, capsys, monkeypatch):
    from mlflow.tracking import MlflowClient

    from dsm.runtime.tracking import tracking_uri, use_experiment

    scores, data, gauss = digits_scores
    work = tmp_path / "scores"
    shutil.copytree(scores, work)
    ws = tmp_path / "ws"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client = MlflowClient(tracking_uri(ws))
    rid = client.create_run(use_experiment("dsm-score", ws), run_name="score").info.run_id
    info = json.loads((work / "scores.json").read_text())
    (work / "scores.json").write_text(json.dumps({**info, "mlflow_run_id": rid}))

    # dsm score prints DIR/parts last; the report accepts that folder.
    rc = main(["report", str(work / "parts"), "--top", "6", "--workspace", str(ws)])
    assert rc == 0
    folder = work / "report"
    assert _last_line(capsys) == str(folder)
    md = (folder / "report.md").read_text()
    for header in SECTIONS:
        assert header in md, header
    assert "Images not available" not in md
    for name in FIGURES:
        assert (folder / name).stat().st_size > 1000, name
        assert f"]({name})" in md, name

    # The numbers are the parquet's, recomputed independently here.
    table = pq.read_table(work / "parts")
    logp = table.column("logp_nats").to_numpy()
    nll = table.column("nll_bpd").to_numpy()
    keys = table.column("key").to_pylist()
    m = json.loads((folder / "metrics.json").read_text())
    assert m["n"] == 1200 and m["d"] == 64 and m["nll_convention"].startswith("continuous")
    assert m["entropy"]["discrete_bits_per_dim"] == pytest.approx(nll.mean(), rel=1e-9)  # 8 + h = mean 8-bit NLL
    assert m["entropy"]["log10_max_min_ratio"] == pytest.approx((logp.max() - logp.min()) / math.log(10))
    assert m["most_probable_keys"][0] == keys[int(np.argmax(logp))]
    assert m["least_probable_keys"][0] == keys[int(np.argmin(logp))]
    assert len(m["most_probable_keys"]) == 6
    assert m["gumbel"]["tail"] == "right" and m["gumbel"]["scale"] > 0
    # d_eff of the exact Gaussian on these images, in closed form (the estimator uses 2 noise draws per image).
    x = torch.from_numpy(np.load(data).reshape(1200, 64) / 255.0)
    for row in m["d_eff"]:
        assert row["denoising_mean"] == pytest.approx(float(gauss.d_eff(x, row["t"]).mean()), rel=0.03)
    assert -1 <= m["sparsity"]["spearman_rho"] <= 1 and m["sparsity"]["n"] == 1200

    # Logged on the scoring run: the folder as artifacts under report/, the numbers as metrics.
    arts = {a.path for a in client.list_artifacts(rid, "report")}
    assert {"report/report.md", "report/logp_hist.png", "report/metrics.json"} <= arts
    assert client.get_run(rid).data.metrics["report_gumbel_loc"] == pytest.approx(m["gumbel"]["loc"])


def test_report_without_images_or_mlflow(digits_scores, tmp_path, capsys, monkeypatch):
    scores, _, _ = digits_scores
    # An unreachable tracking server: the command still succeeds, results on disk only.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    rc = main(["report", str(scores), "--data", str(tmp_path / "moved.npy"), "--out", str(tmp_path / "rep")])
    out_err = capsys.readouterr()
    assert rc == 0, out_err.err
    assert out_err.out.strip().splitlines()[-1] == str(tmp_path / "rep")
    assert "MLflow at http://127.0.0.1:9 is unavailable" in out_err.err
    md = (tmp_path / "rep" / "report.md").read_text()
    for header in SECTIONS:
        assert header in md, header
    assert "Images not available" in md and "moved.npy" in md
    assert "No baselines: pass `--baselines 1,10`" in md
    assert (tmp_path / "rep" / "logp_hist.png").stat().st_size > 1000
    assert not (tmp_path / "rep" / "most_probable.png").exists()


def test_report_bad_input_exits_2(tmp_path, capsys, digits_scores):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no parquet parts" in capsys.readouterr().err
    assert main(["report", str(digits_scores[0]), "--top", "0"]) == 2
    assert "--top" in capsys.readouterr().err


def test_report_builds_without_grid_columns_or_scores_json(digits_scores, tmp_path):
    """A minimal table (no t grid, no scores.json): d comes from the units, the d_eff section says why it is empty."""
    scores, data, _ = digits_scores
    full = pq.read_table(scores / "parts")
    (tmp_path / "s" / "parts").mkdir(parents=True)
    pq.write_table(full.select(["key", "label", "energy_t0", "logp_nats", "nll_bpd", "logp_db_per_dim"]),
                   tmp_path / "s" / "parts" / "part-000000.parquet")
    res = build_report(tmp_path / "s", data=data, top=3)
    assert res["d"] == 64 and "d_eff" not in res and "most_probable.png" in res["figures"]
    assert "empty t grid" in (tmp_path / "s" / "report" / "report.md").read_text()


def _image_bundle(tmp_path):
    from dsm.core.bundle import save_bundle
    from dsm.plumbing.config import load_config
    from dsm.train import build
    from dsm.train.config import TrainConfig

    cfg = load_config(TrainConfig, "configs/digits-smoke.yaml")
    torch.manual_seed(0)
    model = build.build_model(cfg, build.DataShape((1, 8, 8), True))
    return save_bundle(tmp_path / "model.pt", model, cfg, (1, 8, 8), True)


def test_sample_command(tmp_path, capsys):
    model = _image_bundle(tmp_path)  # untrained and unnormalized: sampling needs neither
    args = ["sample", str(model), "--n", "5", "--seed", "3", "--steps", "4", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert _last_line(capsys) == str(tmp_path / "a")
    x = np.load(tmp_path / "a" / "samples.npy")
    assert x.shape == (5, 1, 8, 8) and np.isfinite(x).all()
    assert (tmp_path / "a" / "samples.png").stat().st_size > 1000
    meta = json.loads((tmp_path / "a" / "sample.json").read_text())
    assert meta["t_max"] == 1e3 and meta["t_min"] == 1e-4 and meta["mean"] == 0.5  # the training range; images
    assert main([*args, "--out", str(tmp_path / "b"), "--batch-size", "2"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "b" / "samples.npy"), x)
    assert main(["sample", str(model), "--n", "5", "--seed", "4", "--steps", "4", "--quiet"]) == 0
    default = _last_line(capsys)
    assert default.endswith("samples/seed4-n5-steps4-eta0")
    assert not np.array_equal(np.load(f"{default}/samples.npy"), x)

    assert main(["sample", str(tmp_path / "nope.pt"), "--n", "2", "--seed", "0"]) == 2
    assert "nope.pt" in capsys.readouterr().err
    assert main(["sample", str(model), "--n", "0", "--seed", "0"]) == 2


def test_report_model_sections_and_train_test_cross_entropy(digits_scores, tmp_path):
    """With the model (the exact Gaussian) and a train-scores folder: every paper study, checked in closed form."""
    import dsm.api
    from dsm.report.build import Studies
    from dsm.report.scores import read_scores_dir
    from dsm.stats import density as ds

    from .conftest import SHAPE

    scores, data, gauss = digits_scores
    model = dsm.api.Model(gauss, SHAPE, eight_bit=True, normalized=True)
    studies = Studies(model=model, n_refs=5, n_noise=64, affine_grid=11, t_range=(1e-3, 1.0))
    # The test scores given as train scores too: the gap is exactly 0.
    res = build_report(scores, tmp_path / "rep", data=data, train_scores=scores, studies=studies)
    md = (tmp_path / "rep" / "report.md").read_text()
    for header in SECTIONS:
        assert header in md, header
    assert "No affine study" not in md and "No noisy log p study" not in md and "need `--model`" not in md
    for name in ("logp_affine.png", "logp_noisy.png", "logp_reference_images.png", "logp_hist.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 1000, name
        assert f"]({name})" in md, name
    m = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    sc = read_scores_dir(scores)
    assert m["cross_entropy"]["gap_bpd"] == 0 and m["cross_entropy"]["test_bpd"] == pytest.approx(sc.nll_bpd.mean())
    assert m["gev"]["n"] == 1200 and math.isfinite(m["gev"]["xi"])
    # The best constant image of N(mu, S): c* = 1'S^-1 mu / 1'S^-1 1, clipped to [0, 1].
    s_inv = torch.linalg.inv(gauss.covs[0])
    ones = torch.ones(64, dtype=torch.float64)
    c_star = min(1.0, max(0.0, float(ones @ s_inv @ gauss.means[0] / (ones @ s_inv @ ones))))
    assert m["markers"]["best_constant_value"] == pytest.approx(c_star, abs=1e-4)
    # References evenly spaced in log p; log p(1 x + 0) is each reference's own scored log p.
    rows = ds.rows_evenly_spaced_in_value(sc.logp_nats, 5)
    assert m["affine"]["keys"] == m["noisy_logp"]["keys"] == [sc.keys[r] for r in rows]
    grid = np.load(tmp_path / "rep" / "logp_affine.npz")
    np.testing.assert_allclose(grid["logp_db_per_dim"][:, 0, -1], sc.logp_db[rows], atol=1e-3)
    # E[log p(y, t) | x] of the first reference at the smallest t, in closed form (dB/dim).
    x = torch.from_numpy(np.load(data)[rows[0]].reshape(1, 64) / 255.0)
    t = m["noisy_logp"]["t"][0]
    cov_t = gauss.covs[0] + t * torch.eye(64, dtype=torch.float64)
    mvn = torch.distributions.MultivariateNormal(gauss.means[0], cov_t)
    exact = mvn.log_prob(x) - 0.5 * t * torch.linalg.inv(cov_t).trace()
    got, se = m["noisy_logp"]["mean_db_per_dim"][0][0], m["noisy_logp"]["stderr_db_per_dim"][0][0]
    assert abs(got - float(exact) * 10 / (64 * math.log(10))) < 4 * se + 1e-3
    assert len(m["noisy_logp"]["average_db_per_dim"]) == len(m["noisy_logp"]["t"])
    assert res["affine"]["file"] == "logp_affine.npz"


def test_report_command_with_a_model_file_and_train_scores(digits_scores, tmp_path, capsys, monkeypatch):
    """The CLI wiring: --model (a UNet bundle), --train-scores and the study options; an
    unnormalized model gets notes instead of the model-based sections."""
    from dsm.core.bundle import load_model, save_bundle

    scores, data, _ = digits_scores
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    plain = _image_bundle(tmp_path)
    b = load_model(plain)
    normalized = save_bundle(tmp_path / "normalized.pt", b.model, b.config, b.shape, b.is_image,
                             normalization={"value": 0.0, "stderr": 0.0, "method": "test"})
    opts = ["--train-scores", str(scores), "--data", str(data),
            "--ref-images", "3", "--noise-samples", "2", "--affine-grid", "5"]
    assert main(["report", str(scores), "--model", str(normalized), "--out", str(tmp_path / "a"), *opts]) == 0
    out = capsys.readouterr().out
    assert "test - train +0.0000" in out and "GEV: xi" in out
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert len(m["affine"]["keys"]) == 3 and len(m["affine"]["a"]) == 5 and m["noisy_logp"]["n_noise"] == 2
    assert m["noisy_logp"]["t"][0] == pytest.approx(1e-4) and m["noisy_logp"]["t"][-1] == pytest.approx(1e3)
    assert 0 <= m["markers"]["best_constant_value"] <= 1 and m["markers"]["uniform_noise_n"] == 100
    assert main(["report", str(scores), "--model", str(plain), "--out", str(tmp_path / "b"), *opts]) == 0
    md = (tmp_path / "b" / "report.md").read_text()
    assert "No affine study: the model is not normalized" in md and "need `--model`, a normalized image model" in md
    assert main(["report", str(scores), "--affine-grid", "1"]) == 2
    assert "--affine-grid" in capsys.readouterr().err


@pytest.fixture
def one_blas_thread():
    """scikit-learn's EM on 64-dimensional digits makes many small BLAS calls; with two OpenBLAS
    threads on a loaded 2-core machine each is ~50x slower (20 s against 0.9 s for the fits here)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        yield


def _digits_train(path):
    """The 597 digits after the 1200 scored ones, 8-bit, as the baselines' training split."""
    from sklearn.datasets import load_digits

    np.save(path, np.round(load_digits().images[1200:] / 16 * 255).astype(np.uint8)[:, None])
    return path


def test_report_classical_baselines(digits_scores, tmp_path, capsys, monkeypatch, one_blas_thread):
    """--baselines 1,2 on the exact-Gaussian scores: the K = 1 numbers equal a Gaussian fitted here by
    hand (ML mean and covariance + reg_covar I; smoothed: + t I) on the same images, paired by key."""
    from scipy import stats

    from dsm.report.cli import _numeric_metrics

    scores, data, _ = digits_scores
    train = _digits_train(tmp_path / "train.npy")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    rep = tmp_path / "rep"
    assert main(["report", str(scores), "--baselines", "1,2", "--train-data", str(train), "--smooth-t", "1e-3",
                 "--reg-covar", "1e-5", "--out", str(rep)]) == 0
    out = capsys.readouterr().out
    m = json.loads((rep / "metrics.json").read_text())["baselines"]
    assert f"baselines: {m['verdict']}" in out
    md = (rep / "report.md").read_text()
    assert "## Classical baselines" in md and m["verdict"] in md and "](baselines.png)" in md
    assert (rep / "baselines.png").stat().st_size > 1000
    assert m["n"] == 1200 and m["n_train"] == m["n_train_total"] == 597 and m["ks"] == [1, 2]
    assert m["t_min"] == 1e-3 and m["t_min_source"] == "--smooth-t" and m["reg_covar"] == 1e-5

    as_read = lambda a: (a.astype(np.float32) / 255).astype(np.float64)  # dsm score's reader: float32 k/255
    xt = as_read(np.load(train).reshape(597, 64))
    mean, cov = xt.mean(0), np.cov(xt.T, bias=True) + 1e-5 * np.eye(64)
    table = pq.read_table(scores / "parts").sort_by("key")
    x = as_read(np.load(data).reshape(1200, 64)[[int(k) for k in table.column("key").to_pylist()]])
    model = table.column("logp_nats").to_numpy()
    for tag, t in (("", 0.0), ("smoothed_", 1e-3)):
        lp = stats.multivariate_normal(mean, cov + t * np.eye(64)).logpdf(x)
        assert m[f"k1_{tag}logp_nats_per_dim"] == pytest.approx(lp.mean() / 64, rel=1e-8)
        se = (lp / 64).std(ddof=1) / math.sqrt(1200)
        assert m[f"k1_{tag}logp_stderr_nats_per_dim"] == pytest.approx(se, rel=1e-6)
        diff = (model - lp) / 64
        assert m[f"k1_{tag}diff_nats_per_dim"] == pytest.approx(diff.mean(), rel=1e-8)
        assert m[f"k1_{tag}diff_stderr_nats_per_dim"] == pytest.approx(diff.std(ddof=1) / math.sqrt(1200), rel=1e-6)
        assert m[f"k1_{tag}diff_bits_per_dim"] == pytest.approx(diff.mean() / math.log(2), rel=1e-8)
    arrays = np.load(rep / "baselines_logp.npz")
    assert arrays["keys"].tolist() == table.column("key").to_pylist()
    np.testing.assert_allclose(arrays["k1_smoothed_logp_nats"], lp, rtol=1e-9)
    # The verdict compares the model with the best baseline in the smoothed column.
    best = max(m["ks"], key=lambda k: m[f"k{k}_smoothed_logp_nats_per_dim"])
    assert m["best_k"] == best and m["verdict_column"] == "smoothed to t_min"
    assert m["best_diff_nats_per_dim"] == m[f"k{best}_smoothed_diff_nats_per_dim"]
    word = "beats" if m["best_diff_nats_per_dim"] > 2 * m["best_diff_stderr_nats_per_dim"] else "is worse than"
    assert word in m["verdict"] and f"K = {best}" in m["verdict"]
    assert isinstance(m["k2_converged"], bool) and m["k2_n_iter"] >= 1
    flat = _numeric_metrics({"baselines": m})  # what goes to MLflow
    assert flat["report_baselines_k2_smoothed_diff_nats_per_dim"] == m["k2_smoothed_diff_nats_per_dim"]
    assert "report_baselines_k1_converged" not in flat and "report_baselines_verdict" not in flat


def test_report_baselines_defaults_from_the_model_and_errors(digits_scores, tmp_path, capsys, monkeypatch,
                                                             one_blas_thread):
    """--model supplies the training split (config data.path) and t_min (noise.t_min); without a model
    or --smooth-t the smoothed columns are left out with the reason; no training split exits 2."""
    from dsm.core.bundle import load_model, save_bundle

    scores, data, _ = digits_scores
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    train = _digits_train(tmp_path / "train.npy")
    plain = _image_bundle(tmp_path)
    b = load_model(plain)  # unnormalized: the model-based sections stay out of the way
    cfg = {**b.config, "data": {**b.config["data"], "dataset": None, "path": str(train)}}
    bundle = save_bundle(tmp_path / "with-data.pt", b.model, cfg, b.shape, b.is_image)
    assert main(["report", str(scores), "--model", str(bundle), "--baselines", "1", "--out", str(tmp_path / "a")]) == 0
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())["baselines"]
    assert m["train_data"] == str(train) and m["t_min"] == 1e-4 and m["t_min_source"] == "the model's noise.t_min"
    assert "the model's config data.path" in (tmp_path / "a" / "report.md").read_text()

    capsys.readouterr()
    assert main(["report", str(scores), "--baselines", "1"]) == 2
    assert "--train-data" in capsys.readouterr().err
    assert main(["report", str(scores), "--model", str(plain), "--baselines", "1"]) == 2
    assert "names no data.path" in capsys.readouterr().err
    assert main(["report", str(scores), "--baselines", "1,x", "--train-data", str(train)]) == 2
    assert main(["report", str(scores), "--baselines", "1", "--train-data", str(tmp_path / "nope.npy")]) == 2
    assert "nope.npy" in capsys.readouterr().err


def test_baselines_section_subsample_and_no_t_min(digits_scores, tmp_path, one_blas_thread):
    """The section alone: a seeded training subsample, and without t_min no smoothed columns, with the reason."""
    from dsm.report import baselines as rb
    from dsm.report.scores import read_scores_dir

    scores, data, _ = digits_scores
    sc = read_scores_dir(scores)
    opts = rb.BaselineOptions((1,), str(_digits_train(tmp_path / "train.npy")), max_train=100)
    fitted = rb.fit(opts, sc.d)
    again = rb.read_training(opts.train_data, sc.d, 100, opts.seed)[0]
    np.testing.assert_array_equal(fitted.baselines[0].density.means[0].numpy(), again.mean(0))  # same subsample
    metrics = {}
    md = "\n".join(rb.section(sc, tmp_path, fitted, opts, data, None, metrics))
    m = metrics["baselines"]
    assert m["n_train"] == 100 and m["n_train_total"] == 597 and m["t_min"] is None and m["n"] == 1200
    assert "k1_smoothed_logp_nats_per_dim" not in m and m["verdict_column"] == "as fitted"
    assert "not computed: no --model and no --smooth-t (pass --smooth-t)" in md and "subsample of 100 of its 597" in md
    # Moved images: fitted, not evaluated, and said so.
    assert "not evaluated: could not read" in "\n".join(rb.section(sc, tmp_path, fitted, opts, tmp_path / "moved.npy",
                                                                   None, {}))
    from dsm.stats import baselines as bl

    assert rb.MAX_TRAIN == 10_000 and bl.REG_COVAR == 1e-6  # the defaults `dsm report --help` states
    with pytest.raises(ValueError, match="distinct positive"):
        rb.fit(rb.BaselineOptions((1, 1), "x.npy"), sc.d)
