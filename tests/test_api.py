"""The notebook API (dsm.api) on a real bundle: what a notebook passes in (uint8, NumPy, batches,
a bucket, a registered version) gives the numbers of the model file and of the commands."""

import numpy as np
import pytest
import torch

import dsm.api
from dsm.cli import main
from dsm.core import toy
from dsm.core.bundle import load_model, save_bundle
from tests.models import perturbed_smoke_unet


@pytest.fixture(scope="module")
def unnormalized(tmp_path_factory):
    """A digits-smoke UNet energy of 8-bit 1x8x8 images with random weights, without log Z."""
    model, cfg = perturbed_smoke_unet()
    return save_bundle(tmp_path_factory.mktemp("model") / "model.pt", model, cfg, (1, 8, 8), True)


@pytest.fixture(scope="module")
def bundle(unnormalized, tmp_path_factory):
    """The same model with a log Z."""
    b = load_model(unnormalized)
    b.model.log_z.fill_(3.0)
    return save_bundle(tmp_path_factory.mktemp("normalized") / "model.pt", b.model, b.config, b.shape, b.is_image,
                       normalization={"value": 3.0, "stderr": 0.1, "t": 1e3, "n": 10}, eight_bit=True)


@pytest.fixture(scope="module")
def pixels():
    """Six 8-bit images (uint8 pixel values k), shape (6, 1, 8, 8)."""
    return torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))


def test_uint8_is_read_as_k_over_255_and_numpy_as_torch(bundle, pixels):
    m = dsm.api.load(bundle)
    x = pixels.float() / 255
    want = m.log_prob(x)
    assert want.std() > 0  # the numbers depend on the image
    for given in (pixels, pixels.numpy(), x.numpy(), x.double(), x.numpy().astype(np.float64)):
        torch.testing.assert_close(m.log_prob(given), want, rtol=0, atol=0)
    torch.testing.assert_close(m.nll(pixels.numpy()), m.nll(x), rtol=0, atol=0)
    torch.testing.assert_close(m.energy(pixels, 0.1), m.energy(x, 0.1), rtol=0, atol=0)
    torch.testing.assert_close(m.denoise(pixels.numpy(), 0.1), m.denoise(x, 0.1), rtol=0, atol=0)
    de, de_np = m.d_eff(x, 0.1, n_noise=2), m.d_eff(pixels.numpy(), 0.1, n_noise=2)
    torch.testing.assert_close(de.denoising, de_np.denoising, rtol=0, atol=0)


def test_floats_of_0_to_255_and_wrong_inputs_are_refused_with_what_to_do(bundle, pixels):
    m = dsm.api.load(bundle)
    with pytest.raises(ValueError, match="pass the uint8 pixel values .* or divide by 255"):
        m.log_prob(pixels.float())
    with pytest.raises(ValueError, match=r"shape \(6, 8, 8\); this model takes \(B, 1, 8, 8\)"):
        m.log_prob(pixels[:, 0])
    with pytest.raises(ValueError, match="dtype torch.int64"):
        m.log_prob(pixels.long())
    noisy = pixels.float() / 255 + 3 * torch.randn(6, 1, 8, 8)  # a noisy y is not data: no range check
    assert torch.isfinite(m.energy(noisy, 9.0)).all()
    vector = dsm.api.from_energy(toy.Gaussian(torch.zeros(4), torch.ones(4)))
    with pytest.raises(ValueError, match="trained on float data"):
        vector.log_prob(np.zeros((2, 4), np.uint8))


def test_batched_equals_unbatched(bundle, pixels):
    m = dsm.api.load(bundle)
    x = pixels.float() / 255
    torch.testing.assert_close(m.log_prob(x, batch_size=4), m.log_prob(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(m.energy(x, torch.linspace(0.01, 1, 6), batch_size=1),
                               m.energy(x, torch.linspace(0.01, 1, 6)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m.denoise(x, 0.1, batch_size=5), m.denoise(x, 0.1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m.nll(pixels, "dequantized", batch_size=2), m.nll(pixels, "dequantized"),
                               rtol=1e-6, atol=1e-6)
    a, b = m.d_eff(x, 0.1, n_noise=2, batch_size=3), m.d_eff(x, 0.1, n_noise=2)
    torch.testing.assert_close(a.time, b.time, rtol=1e-5, atol=1e-4)


def test_the_conventions_are_named_as_in_the_columns_and_docs(bundle, pixels):
    m = dsm.api.load(bundle)
    logp = m.log_prob(pixels)
    torch.testing.assert_close(m.nll(pixels), 8 - logp / (64 * np.log(2)))
    torch.testing.assert_close(m.nll(pixels, "continuous"), m.nll(pixels))
    torch.testing.assert_close(m.nll(pixels, "plain"), -logp / (64 * np.log(2)))
    deq = m.nll(pixels, "dequantized")
    assert deq.shape == (6,) and not torch.equal(deq, m.nll(pixels))
    assert set(dsm.api.CONVENTIONS) == {"continuous", "dequantized", "plain"}
    with pytest.warns(DeprecationWarning, match="'continuous'"):
        torch.testing.assert_close(m.nll(pixels, "8bit"), m.nll(pixels))
    with pytest.raises(ValueError, match="needs the uint8 pixel values"):
        m.nll(pixels.float() / 255, "dequantized")
    with pytest.raises(ValueError, match="one of continuous, dequantized, plain"):
        m.nll(pixels, "bits")


def test_the_dequantized_nll_is_dsm_scores_column(bundle, pixels):
    """The same keys draw the same u, so the notebook's number is the parquet's."""
    from dsm.scoring.columns import ScoreSpec, score_batch

    m = dsm.api.load(bundle)
    keys = [f"img{i}" for i in range(6)]
    cols = score_batch(m.energy_model, pixels.float() / 255, keys, ScoreSpec(t_grid=(), dequantize=True),
                       eight_bit=True)
    np.testing.assert_allclose(m.nll(pixels, "dequantized", keys=keys).numpy(), cols["nll_bpd_dequantized"],
                               rtol=1e-12)
    np.testing.assert_allclose(m.nll(pixels).numpy(), cols["nll_bpd"], rtol=1e-12)


def test_normalize_in_a_notebook_gives_dsm_normalizes_log_z(unnormalized, pixels, tmp_path):
    held_out = tmp_path / "held_out.npy"
    np.save(held_out, pixels.permute(0, 2, 3, 1).numpy())  # (n, H, W, C) uint8, as dsm reads a .npy
    m = dsm.api.load(unnormalized)
    assert "not normalized" in repr(m)
    with pytest.raises(dsm.api.NotNormalized, match=r"model.normalize\(held_out_data\)"):
        m.log_prob(pixels)
    got = m.normalize(held_out, samples=6, t=100.0)
    assert m.normalized and m.log_z == got.value and got.stderr > 0 and got.n == 6 and got.t == 100.0
    assert np.isfinite(m.log_prob(pixels).numpy()).all()

    on_disk = tmp_path / "model.pt"
    on_disk.write_bytes(unnormalized.read_bytes())
    assert main(["normalize", str(on_disk), "--data", str(held_out), "--samples", "6", "--t", "100"]) == 0
    record = load_model(on_disk).normalization
    assert (record["value"], record["stderr"]) == (got.value, got.stderr)
    assert m.meta["normalization"]["agreement"] == record["agreement"]
    from_array = dsm.api.load(unnormalized).normalize(pixels.numpy(), t=100.0)  # keys: the row indices
    assert from_array.n == 6 and np.isfinite(from_array.value)


def test_repr_says_what_the_model_is(bundle):
    text = repr(dsm.api.load(bundle))
    for part in ("shape=(1, 8, 8)", "parameters", "log Z 3.0000 nats", "t in [0.0001, 1000]", "8-bit images",
                 "model.pt"):
        assert part in text, (part, text)


def test_load_from_a_bucket_equals_the_file(bundle, bucket, pixels):
    from dsm.plumbing.store import Location

    url = f"{bucket}/models/model.pt"
    Location.of(url).upload(bundle)
    m = dsm.api.load(url)
    assert m.source == url
    torch.testing.assert_close(m.log_prob(pixels), dsm.api.load(bundle).log_prob(pixels), rtol=0, atol=0)
    with pytest.raises(ValueError, match=f"{bucket}/models/nope.pt"):
        dsm.api.load(f"{bucket}/models/nope.pt")


def test_load_a_registered_version_equals_the_file(bundle, pixels, tmp_path):
    from mlflow.tracking import MlflowClient

    from dsm.plumbing.fileio import sha256_file
    from dsm.runtime import mlmodel
    from dsm.runtime.tracking import tracking_uri, use_experiment

    uri = tracking_uri(tmp_path)
    client = MlflowClient(uri)
    run_id = client.create_run(use_experiment("dsm-train", tmp_path, client)).info.run_id
    mlmodel.register(client, "digits", mlmodel.log_bundle(client, run_id, bundle, sha256_file(bundle)), run_id)
    client.set_registered_model_alias("digits", "best", "1")
    want = dsm.api.load(bundle).log_prob(pixels)
    for ref in ("models:/digits/1", "models:/digits@best"):
        m = dsm.api.load(ref, tracking_uri=uri)
        assert m.source == ref
        torch.testing.assert_close(m.log_prob(pixels), want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="models:/digits/7: no such registered model version"):
        dsm.api.load("models:/digits/7", tracking_uri=uri)
