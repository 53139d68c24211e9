"""Study 04: the distribution of log p over a held-out set, and its Gumbel fit.

    .venv/bin/python analysis/04-logp-distribution/run.py [--config digits-long.yaml] [overrides ...]

train (dsm train, resumable) -> score the held-out split (dsm score; the model is normalized at
the end of training) -> dsm report. Copies the numbers into results.json beside this script and
one composite figure (histogram + most/least probable images) into logp.png.
Workspace: analysis/runs (or $DSM_ANALYSIS_WORKSPACE).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(HERE / "digits-long.yaml"))
    ap.add_argument("--top", type=int, default=16)
    ap.add_argument("--score-args", default="", help="extra dsm score flags, e.g. '--gpu --actors 8 --batch-size 256'")
    ap.add_argument("--t-grid", default="1e-4:1e2:5", help="dsm score --t-grid (the paper's: 1e-12:1e3:100)")
    ap.add_argument("overrides", nargs="*", help="dsm train key=value overrides")
    args = ap.parse_args()
    logs = common.WORKSPACE / "logs" / "04"
    model = common.train(args.config, *args.overrides, log=logs / "train.log")
    test = common.test_split(model)
    scores = common.WORKSPACE / "scores" / f"04-{model.parent.name}-{args.t_grid.replace(':', '_')}"
    common.score(model, test, scores, "--t-grid", args.t_grid, "--noise-samples", "4", *shlex.split(args.score_args),
                 log=logs / "score.log")
    folder = common.report(scores, "--model", str(model), "--top", str(args.top), log=logs / "report.log")
    m = json.loads((folder / "metrics.json").read_text())
    result = {
        "model": str(model.relative_to(common.REPO)) if model.is_relative_to(common.REPO) else str(model),
        "data": str(test), "report": str(folder), "n": m["n"], "d": m["d"], "nll_convention": m["nll_convention"],
        "logp_db_per_dim": m["logp_db_per_dim"], "gumbel": m.get("gumbel"), "entropy": m["entropy"],
        "sparsity": m.get("sparsity"), "most_probable_keys": m.get("most_probable_keys"),
        "least_probable_keys": m.get("least_probable_keys"),
        "paper": {"data": "ImageNet64 test set, grayscale", "d": 4096, "mean_db_per_dim": 11.43, "std": 4.17,
                  "gumbel_loc": 9.57, "gumbel_scale": 3.17, "log10_max_min_ratio": 14000},
    }
    # the other orientation too: the report fits the paper's right-tailed Gumbel by default
    import pandas as pd

    from dsm.stats import density as density_stats

    db = pd.read_parquet(scores / "parts", columns=["logp_db_per_dim"])["logp_db_per_dim"].to_numpy()
    result["gumbel_left"] = density_stats.gumbel_fit(db, "left").as_dict()
    result["gumbel_right"] = density_stats.gumbel_fit(db, "right").as_dict()
    common.write_json(HERE / "results.json", result)
    _composite(folder, HERE / "logp.png")
    lp, g, e = m["logp_db_per_dim"], m.get("gumbel") or {}, m["entropy"]
    print(f"log p: mean {lp['mean']:.3f} dB/dim, std {lp['std']:.3f}, skew {lp['skewness']:+.3f}; Gumbel loc "
          f"{g.get('loc', float('nan')):.3f} scale {g.get('scale', float('nan')):.3f} "
          f"KS {g.get('ks_stat', float('nan')):.3f}; "
          f"max/min ratio 10^{e['log10_max_min_ratio']:.1f}")
    print(HERE / "results.json")


def _composite(folder: Path, out: Path) -> None:
    """One small PNG for the repository: the histogram with its Gumbel fit, and both image grids."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    parts = [p for p in ("logp_hist.png", "most_probable.png", "least_probable.png") if (folder / p).exists()]
    if not parts:
        return
    ratios = [mpimg.imread(folder / p).shape[0] / mpimg.imread(folder / p).shape[1] for p in parts]
    fig, axes = plt.subplots(len(parts), 1, figsize=(8, 8 * sum(ratios)), gridspec_kw={"height_ratios": ratios},
                             squeeze=False)
    for ax, p in zip(axes[:, 0], parts):
        ax.imshow(mpimg.imread(folder / p))
        ax.axis("off")
    fig.tight_layout(pad=0.2)
    fig.savefig(out, dpi=80)
    plt.close(fig)



if __name__ == "__main__":
    main()
