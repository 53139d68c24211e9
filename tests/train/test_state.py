"""Checkpoint contents: resuming from a saved state continues exactly as if never stopped."""

import warnings

import pytest
import torch

from dsm.core.seeding import key_seed
from dsm.core.step import NonFinitePolicy, train_step
from dsm.train import build
from dsm.train.state import TrainState, load_state, save_state


def _steps(cfg, model, opt, sched, x, start, stop, sampler, ema=None):
    loss_fn = build.build_loss(cfg)
    for step in range(start, stop):
        gen = torch.Generator().manual_seed(key_seed(step, f"train/{cfg.seed}/0"))
        train_step(model, opt, loss_fn, x[step % 4 * 16:(step % 4 + 1) * 16], sampler, generator=gen, scheduler=sched,
                   ema=ema)


@pytest.mark.parametrize("variant", [(), ("noise.sampler=importance", "noise.importance.bins=4",
                                           "noise.importance.warmup=1", "loss.heat_weight=0.1",
                                           "optim.ema_decay=0.8", "optim.ema_warmup=true")])
def test_resume_matches_uninterrupted(make_cfg, tmp_path, variant):
    # the second variant has state beyond the model's: the importance sampler's, in the checkpoint
    cfg = make_cfg("optim.schedule=halving", "optim.halve_every=3", "scaling.workers=1", *variant)
    shape = build.DataShape((1, 8, 8), True)
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    torch.manual_seed(0)
    ref = build.build_model(cfg, shape)
    opt, sched = build.build_optimizer(cfg, ref)
    ema_ref = build.build_ema(cfg, ref)
    _steps(cfg, ref, opt, sched, x, 0, 10, build.build_sampler(cfg), ema_ref)

    torch.manual_seed(0)
    a = build.build_model(cfg, shape)
    opt_a, sched_a = build.build_optimizer(cfg, a)
    sampler_a, ema_a = build.build_sampler(cfg), build.build_ema(cfg, a)
    _steps(cfg, a, opt_a, sched_a, x, 0, 6, sampler_a, ema_a)
    save_state(tmp_path, model=a, optimizer=opt_a, scheduler=sched_a,
               state=TrainState(step=6, nonfinite=NonFinitePolicy(3, skipped=2, bad_run=1), mlflow_run_id="r",
                                best_nll_bpd=1.5, best_step=4),
               config=cfg.model_dump(mode="json"), batches_per_epoch=4, world_size=1, sampler=sampler_a, ema=ema_a)

    torch.manual_seed(123)  # a fresh process: different init, fresh optimizer
    b = build.build_model(cfg, shape)
    opt_b, sched_b = build.build_optimizer(cfg, b)
    sampler_b, ema_b = build.build_sampler(cfg), build.build_ema(cfg, b)
    policy = NonFinitePolicy(5)  # the limit is the resumed config's; the counts are the checkpoint's
    state, blob = load_state(tmp_path, model=b, optimizer=opt_b, scheduler=sched_b, sampler=sampler_b, ema=ema_b,
                             nonfinite=policy)
    assert state.step == 6 and state.mlflow_run_id == "r"
    assert state.nonfinite is policy and (policy.max_bad_steps, policy.skipped, policy.bad_run) == (5, 2, 1)
    assert (state.best_nll_bpd, state.best_step) == (1.5, 4)  # model selection survives a resume
    assert blob["data"] == {"epoch": 1, "offset": 2, "batches_per_epoch": 4, "world_size": 1}
    assert opt_b.param_groups[0]["lr"] == opt_a.param_groups[0]["lr"] == cfg.optim.lr / 4
    if variant:
        assert not torch.allclose(sampler_b.probabilities(), torch.full((4,), 0.25, dtype=torch.float64))
    _steps(cfg, b, opt_b, sched_b, x, 6, 10, sampler_b, ema_b)
    for (name, p), q in zip(ref.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    if ema_ref is not None:  # the weight EMA resumes too (and is not the raw weights)
        for (name, p), q, _w in zip(ema_ref.module.named_parameters(), ema_b.module.parameters(), b.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
        assert any(not torch.equal(q, w) for q, w in zip(ema_b.module.parameters(), b.parameters()))


def test_checkpoint_without_ema_restarts_it_from_the_weights(make_cfg, tmp_path):
    """optim.ema_decay added when resuming an older run: the EMA starts from the restored weights."""
    shape = build.DataShape((1, 8, 8), True)
    cfg = make_cfg("scaling.workers=1")
    torch.manual_seed(0)
    a = build.build_model(cfg, shape)
    opt_a, sched_a = build.build_optimizer(cfg, a)
    save_state(tmp_path, model=a, optimizer=opt_a, scheduler=sched_a, state=TrainState(step=3),
               config=cfg.model_dump(mode="json"), batches_per_epoch=4, world_size=1)
    cfg = make_cfg("scaling.workers=1", "optim.ema_decay=0.99")
    torch.manual_seed(1)
    b = build.build_model(cfg, shape)
    opt_b, sched_b = build.build_optimizer(cfg, b)
    ema = build.build_ema(cfg, b)
    with pytest.warns(UserWarning, match="no weight EMA"):
        load_state(tmp_path, model=b, optimizer=opt_b, scheduler=sched_b, ema=ema)
    for p, q in zip(ema.module.parameters(), a.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_a_checkpoint_that_would_run_code_is_refused_on_resume(make_cfg, tmp_path):
    """A state.pt whose pending metric rows hold an object with __reduce__: resuming
    must refuse it, naming the file, and never run the call."""
    import os

    class RunsCode:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'pwned'}",)

    cfg = make_cfg("scaling.workers=1")
    model = build.build_model(cfg, build.DataShape((1, 8, 8), True))
    opt, sched = build.build_optimizer(cfg, model)
    save_state(tmp_path, model=model, optimizer=opt, scheduler=sched, config={},
               state=TrainState(step=1, pending=[(1, {"loss": RunsCode()})]), batches_per_epoch=4, world_size=1)
    with pytest.raises(ValueError, match="not a trusted dsm training checkpoint") as e:
        load_state(tmp_path, model=model, optimizer=opt, scheduler=sched)
    assert not (tmp_path / "pwned").exists() and "weights_only" not in str(e.value)


@pytest.mark.parametrize("fused", [False, True])
def test_resume_keeps_adam_step_counters_where_torch_puts_them(tmp_path, fused):
    """The checkpoint is read onto the CPU, whatever device the model is on, and the optimizer
    places its state: the moments on the parameters' device, the step counters on the CPU (on
    the parameters' device only for a fused optimizer). A model on 'meta' stands in for a GPU:
    reading the file onto the model's device would put every counter there."""
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt_a = torch.optim.Adam(a.parameters(), lr=1e-3, fused=fused)
    sched_a = torch.optim.lr_scheduler.StepLR(opt_a, step_size=2)
    for _ in range(3):
        opt_a.zero_grad()
        a(torch.randn(16, 4)).square().mean().backward()
        opt_a.step()
        sched_a.step()
    save_state(tmp_path, model=a, optimizer=opt_a, scheduler=sched_a, state=TrainState(step=3), config={},
               batches_per_epoch=4, world_size=1)

    b = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).to("meta")
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-3, fused=fused)
    sched_b = torch.optim.lr_scheduler.StepLR(opt_b, step_size=2)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter")  # no weights on meta
        state, _ = load_state(tmp_path, model=b, optimizer=opt_b, scheduler=sched_b)
    assert state.step == 3 and len(opt_b.state) == 4
    for p in b.parameters():
        st = opt_b.state[p]
        assert st["exp_avg"].device.type == st["exp_avg_sq"].device.type == "meta"
        assert st["step"].device.type == ("meta" if fused else "cpu") and st["step"].dtype == torch.float32
        if not fused:
            assert float(st["step"]) == 3
