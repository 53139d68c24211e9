"""Study 03: generalization. Models trained on disjoint subsets A and B of size N, over N.

    .venv/bin/python analysis/03-generalization/run.py [--config config.yaml] [--sizes 16,128,719]

For each N: `dsm train` on the first N shuffled training digits (A) and on the last N (B)
(disjoint for 2N <= 1438); `dsm score` both on the same held-out split (log p only, no t grid);
dsm.stats.density.generalization on their log p in dB/dim (Pearson correlation, RMS and mean
difference); `dsm sample` from both with the same seed, so each pair starts from the same noise,
and the median RMS distance of each model's samples (clipped to [0, 1]) to the nearest digit of
its own training subset, of the other subset, and of the test split (memorization check).
Everything is resumable (finished runs, parts and samples are reused).
Writes results.json and samples.png (rows: N; left A, right B) beside this script.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

from dsm.stats import density as density_stats  # noqa: E402

HERE = Path(__file__).resolve().parent


def logp_by_key(parts: Path) -> dict[str, float]:
    import pandas as pd

    df = pd.read_parquet(parts, columns=["key", "logp_db_per_dim", "nll_bpd"])
    return dict(zip(df["key"], df["logp_db_per_dim"]))


def read_all(data: Path) -> np.ndarray:
    """Every image of a split folder (shards, .npy or image folder), as float arrays (n, C, H, W)."""
    from dsm.data.inputs import open_input

    inp = open_input(data)
    return np.concatenate([np.asarray(inp.read(i)[1], dtype=np.float64) for i in range(len(inp.pieces))])


def nearest_rms(samples: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per sample, the RMS pixel distance to its nearest neighbour in ``ref``."""
    a, b = samples.reshape(len(samples), -1), ref.reshape(len(ref), -1)
    d2 = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(d2.min(1), 0) / a.shape[1])


def train_split(model: Path) -> Path:
    import yaml as _yaml

    return Path(_yaml.safe_load((model.parent / "config.yaml").read_text())["data"]["path"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(HERE / "config.yaml"))
    ap.add_argument("--sizes", help="comma-separated N, overriding the config's sizes")
    args = ap.parse_args()
    cfg = yaml.safe_load(Path(args.config).read_text())
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else cfg["sizes"]
    train_cfg = (Path(args.config).parent / cfg["train_config"]).resolve()
    logs = common.WORKSPACE / "logs" / "03"
    # one held-out split for every model: the full digits test split (the subsets only cut the train split)
    test = None
    per_n, samples = [], {}
    for n in sizes:
        if 2 * n > 1438:
            raise SystemExit(f"N={n}: subsets A and B of the 1438 training digits overlap for N > 719")
        models, lp = {}, {}
        for half, opt in (("A", f"data.prepare.first={n}"), ("B", f"data.prepare.last={n}")):
            model = common.train(train_cfg, opt, log=logs / f"train-N{n}-{half}.log")
            models[half] = model
            if test is None:
                test = common.test_split(model)
            parts = common.score(model, test, common.WORKSPACE / "scores" / f"03-{model.parent.name}",
                                 "--t-grid", "", log=logs / f"score-N{n}-{half}.log")
            lp[half] = logp_by_key(parts)
            s = cfg["sample"]
            t_max = s.get("t_max")
            out = common.WORKSPACE / "samples" / f"03-{model.parent.name}-seed{s['seed']}-tmax{t_max or 'train'}"
            extra = ["--t-max", str(t_max)] if t_max else []
            samples[(n, half)] = common.sample(model, s["n"], s["seed"], "--steps", str(s["steps"]), *extra,
                                               "--out", str(out), "--quiet", log=logs / f"sample-N{n}-{half}.log")
        keys = sorted(set(lp["A"]) & set(lp["B"]))
        a = np.array([lp["A"][k] for k in keys])
        b = np.array([lp["B"][k] for k in keys])
        g = density_stats.generalization(a, b)
        sa = np.load(samples[(n, "A")] / "samples.npy")
        sb = np.load(samples[(n, "B")] / "samples.npy")
        row = {"N": n, **g.as_dict(), "mean_logp_db_A": float(a.mean()), "mean_logp_db_B": float(b.mean()),
               "std_logp_db_A": float(a.std(ddof=1)), "std_logp_db_B": float(b.std(ddof=1)),
               "sample_rms_diff_A_vs_B": float(np.sqrt(((sa - sb) ** 2).mean())),
               "sample_corr_A_vs_B": float(np.corrcoef(sa.ravel(), sb.ravel())[0, 1]),
               "models": {h: str(m) for h, m in models.items()}}
        # memorization: how close each sample is to its own training subset, the other one, the test set
        test_x = read_all(test)
        for half, smp in (("A", sa), ("B", sb)):
            own = read_all(train_split(models[half]))
            other = read_all(train_split(models["B" if half == "A" else "A"]))
            smp = np.clip(smp, 0, 1)
            row[f"nn_rms_{half}_to_own_train"] = float(np.median(nearest_rms(smp, own)))
            row[f"nn_rms_{half}_to_other_train"] = float(np.median(nearest_rms(smp, other)))
            row[f"nn_rms_{half}_to_test"] = float(np.median(nearest_rms(smp, test_x)))
        per_n.append(row)
        print(f"N={n}: corr {g.pearson:.4f}, RMS diff {g.rms_diff:.3f} dB/dim, mean diff {g.mean_diff:+.3f} dB/dim "
              f"({g.n} test images); samples A vs B: pixel corr {row['sample_corr_A_vs_B']:.3f}; median NN RMS of "
              f"A's samples to A's / B's training digits {row['nn_rms_A_to_own_train']:.3f} / "
              f"{row['nn_rms_A_to_other_train']:.3f}")
    result = {"sizes": sizes, "train_config": str(train_cfg.relative_to(common.REPO)), "test": str(test),
              "per_n": per_n, "sample_settings": cfg["sample"],
              "paper": {"data": "ImageNet64", "memorization_up_to_N": 100, "agreement_from_N": 1000,
                        "N_1e5": {"rms_diff_db_per_dim": 0.19, "pearson": 0.9987}}}
    common.write_json(HERE / "results.json", result)
    _figure(HERE / "samples.png", sizes, samples)
    print(HERE / "results.json")


def _figure(path: Path, sizes, samples) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(sizes), 2, figsize=(10, 0.75 + 0.85 * len(sizes)), squeeze=False)
    for i, n in enumerate(sizes):
        for j, half in enumerate("AB"):
            x = np.load(samples[(n, half)] / "samples.npy")[:8]  # (8, C, H, W)
            tiles = np.concatenate([np.pad(im[0], 1, constant_values=1) for im in x], axis=1)
            axes[i, j].imshow(np.clip(tiles, 0, 1), cmap="gray", vmin=0, vmax=1)
            axes[i, j].set_title(f"N = {n}, subset {half}", fontsize=9)
            axes[i, j].axis("off")
    fig.suptitle("samples from the same start noise: model A (left) vs model B (right)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
