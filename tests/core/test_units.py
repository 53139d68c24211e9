import math

import pytest
import torch

from dsm.core import toy, units


def test_round_trips():
    logp = torch.tensor([-1234.5, 0.0, 56.7], dtype=torch.float64)
    d = 3072
    assert torch.allclose(units.logp_from_bits_per_dim(units.bits_per_dim(logp, d), d), logp)
    assert torch.allclose(units.logp_from_db_per_dim(units.db_per_dim(logp, d), d), logp)
    assert torch.allclose(units.logp_from_nll_bpd_8bit(units.nll_bpd_8bit(logp, d), d), logp)
    assert units.nats_per_dim(10.0, 4) == 2.5


def test_known_values():
    d = 100
    logp = -d * math.log(2)  # p = 2^-d: exactly 1 bit/dim
    assert units.bits_per_dim(logp, d) == pytest.approx(1.0)
    assert units.db_per_dim(d * math.log(10), d) == pytest.approx(10.0)  # p = 10^d -> 10 dB/dim


def test_uniform_density_is_exactly_8_bits_per_dim():
    x = torch.rand(5, 64, generator=torch.Generator().manual_seed(0))
    logp = toy.uniform_box_log_prob(x)
    assert units.nll_bpd_8bit(logp, 64).tolist() == [8.0] * 5


def test_dequantize():
    k = torch.tensor([0, 255, 128], dtype=torch.uint8)
    x = units.dequantize(k, generator=torch.Generator().manual_seed(0))
    assert ((x >= k.float() / 256) & (x < (k.float() + 1) / 256)).all()
    assert units.dequantize(k, u=torch.zeros(3)).tolist() == [0.0, 255 / 256, 0.5]
    with pytest.raises(ValueError, match="uint8"):
        units.dequantize(k.float())
    assert set(units.CONVENTIONS) == {"continuous", "dequantized", "plain"}


def test_to_unit_float_is_k_over_255_and_passes_floats_through():
    k = torch.arange(256, dtype=torch.uint8)
    before = k.float().div_(255.0)  # what the loader workers computed before handing over bytes
    got = units.to_unit_float(k.reshape(4, 1, 8, 8))
    assert got.dtype == torch.float32 and got.shape == (4, 1, 8, 8)
    assert torch.equal(got.flatten().view(torch.int32), before.view(torch.int32))  # bit for bit
    assert got.min() == 0.0 and got.max() == 1.0
    table = units._unit_table(torch.device("cpu"))  # what other devices look k up in
    assert torch.equal(table.view(torch.int32), before.view(torch.int32))
    v = torch.randn(5, 3)
    assert torch.equal(units.to_unit_float(v, "cpu"), v)
    assert units.to_unit_float(k, "meta").device.type == "meta"  # converted on the device it is sent to
