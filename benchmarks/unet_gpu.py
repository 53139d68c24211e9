"""UNet energy on an accelerator: throughput and accuracy in fp32, TF32 and bf16 autocast.

The issue's GPU targets, `paper` preset at 3x64x64, batch 128:
- training throughput in images/s per precision, against about 310 images/s for the
  paper's code in fp32 on one H100 (target: at least 3x that);
- on the same weights, the difference from fp32 in the loss and in normalized log p
  (target: within 0.01 bits/dim);
- the score network's step in the same run, for the energy/score ratio (target <= 2.5).

The weights are first trained in fp32 for ``--warm-steps`` on natural 64x64 crops of the
photos that ship with dsm (at initialisation the output layer is zero and U = 0), then
every precision is evaluated on them. Prints one table; nothing is assumed about the device.

    .venv/bin/python benchmarks/unet_gpu.py [--device cuda] [--batch 128] [--warm-steps 200]
    .venv/bin/python benchmarks/unet_gpu.py --device cpu --preset tiny --size 16 --batch 8 \
        --warm-steps 5 --repeats 2     # a check of the script itself on a CPU
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time

import torch
from _common import machine

from dsm import losses, models, noise
from dsm.normalize import estimate_log_z
from dsm.step import train_step

PAPER_FP32_IMAGES_PER_S = 310.0  # the figure for the paper's code, one H100


def natural_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) crops of the bundled photos, pixels in [0, 1]."""
    from dsm.data.images import box_downsample
    from dsm.data.sources import PrepareConfig, load_patches

    patches = load_patches("train", PrepareConfig(patch=2 * size, count=n, seed=seed)).images
    return torch.from_numpy(box_downsample(patches, size)).permute(0, 3, 1, 2).float() / 255


@contextlib.contextmanager
def precision(mode: str, device: torch.device):
    """fp32 (TF32 off), tf32 (TF32 matmuls and convolutions), or bf16 (autocast)."""
    cuda = device.type == "cuda"
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) if cuda else None
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = mode == "tf32"
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode == "bf16"):
            yield
    finally:
        if cuda:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_s(step, batch: int, repeats: int, device: torch.device) -> float:
    for _ in range(2):  # warm-up (cuDNN autotuning, the allocator, oneDNN primitives)
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    sync(device)
    return batch * repeats / (time.perf_counter() - t0)


def log_p_bits(model, x: torch.Tensor, t_max: float) -> torch.Tensor:
    """Normalized log p(x) per image in bits/dim, with log Z estimated under the same precision."""
    lz = estimate_log_z(model, x, t_max, batch_size=64)
    t0 = torch.zeros(x.shape[0], device=x.device)
    with torch.no_grad():
        u = torch.cat([model.energy(x[i:i + 64], t0[i:i + 64]).double() for i in range(0, x.shape[0], 64)])
    return (-u - lz.value) / (math.prod(x.shape[1:]) * math.log(2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--preset", default="paper")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=10, help="timed steps per precision")
    p.add_argument("--warm-steps", type=int, default=200, help="fp32 training steps before the comparison")
    p.add_argument("--eval-images", type=int, default=256)
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    data = natural_images(args.batch * 4 + args.eval_images, args.size).to(device)
    train, held = data[:args.batch * 4], data[args.batch * 4:]
    energy = models.unet_energy(3, args.size, args.preset).to(device)
    score = models.unet_score_model(3, args.size, args.preset).to(device)
    sampler = noise.make_t_sampler("log_uniform", 1e-9, 1e3)
    opt_e, opt_s = torch.optim.Adam(energy.parameters(), 5e-4), torch.optim.Adam(score.parameters(), 5e-4)
    batches = iter(lambda: train[torch.randint(0, train.shape[0], (args.batch,), device=device)], None)

    with precision("fp32", device):
        for _ in range(args.warm_steps):
            train_step(energy, opt_e, losses.DualScoreMatching(), next(batches), sampler)
    print(f"machine: {machine()}")
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else device}")
    print(f"preset {args.preset}, 3x{args.size}x{args.size}, batch {args.batch}, "
          f"{args.warm_steps} fp32 warm-up steps\n")

    state = {k: v.clone() for k, v in energy.state_dict().items()}
    fixed = next(batches)
    ref_loss = ref_logp = None
    print("| precision | energy img/s | score img/s | energy/score | x paper fp32 | loss - fp32 | "
          "max abs log p - fp32 (bits/dim) |")
    print("|---|---|---|---|---|---|---|")
    for mode in ("fp32", "tf32", "bf16"):
        with precision(mode, device):
            e_rate = images_per_s(lambda: train_step(energy, opt_e, losses.DualScoreMatching(), next(batches),
                                                     sampler), args.batch, args.repeats, device)
            s_rate = images_per_s(lambda: train_step(score, opt_s, losses.Denoising(), next(batches), sampler),
                                  args.batch, args.repeats, device)
            energy.load_state_dict(state)  # the timing steps moved the weights: compare on the same ones
            energy.eval()
            gen = torch.Generator(device=device).manual_seed(1234)  # the same t and z for every precision
            t = sampler(fixed.shape[0], generator=gen, device=device)
            z = torch.randn(fixed.shape, generator=gen, device=device)
            with torch.enable_grad():
                loss = float(losses.DualScoreMatching()(energy, fixed, t, z).total.mean().detach())
            logp = log_p_bits(energy, held, 1e3)
        if mode == "fp32":
            ref_loss, ref_logp = loss, logp
        print(f"| {mode} | {e_rate:.0f} | {s_rate:.0f} | {s_rate / e_rate:.2f} | "
              f"{e_rate / PAPER_FP32_IMAGES_PER_S:.2f} | {loss - ref_loss:+.2e} | "
              f"{float((logp - ref_logp).abs().max()):.2e} |")
    print(f"\nfp32 mean log p of {held.shape[0]} held-out crops: {float(ref_logp.mean()):.3f} bits/dim")


if __name__ == "__main__":
    main()
