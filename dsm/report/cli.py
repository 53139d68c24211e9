"""``dsm report``, ``dsm sample`` and ``dsm compare``: registered into the top-level parser by :func:`register`.

Bad input (a missing scores folder, an unreadable model, bad numbers) exits with status 2 and
a message naming the file or the option. Each command prints its output folder as its last
line. ``dsm report`` logs its folder to MLflow but never fails because of MLflow.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dsm.cliopts import add_old_name, add_workspace
from dsm.scoring.cli import add_precision


def _numeric_metrics(metrics: dict) -> dict[str, float]:
    """The report's scalar numbers as flat MLflow metric names (``report_<section>_<name>``)."""
    out: dict[str, float] = {}
    for section in ("logp_db_per_dim", "gumbel", "gev", "markers", "entropy", "cross_entropy", "sparsity",
                    "baselines"):
        for k, v in metrics.get(section, {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"report_{section}_{k}"] = float(v)
    return out


def _log_report(workspace: str | None, folder: Path, info: dict, model_meta: dict, metrics: dict) -> str | None:
    """Log the report folder as artifacts (under ``report/``) and its numbers as metrics: on the
    scoring run when scores.json records one that this store knows, else on a new run about the
    model (dsm.runtime.tracking.child_run). Never fails the command."""
    from dsm.runtime.tracking import best_effort, child_run, tracking_uri

    uri = tracking_uri(workspace)

    def log(client) -> str:
        rid, created = info.get("mlflow_run_id"), False
        if rid:
            try:
                client.get_run(rid)
            except Exception:  # noqa: BLE001 - logged in another store, or deleted
                print(f"dsm report: the scoring run {rid} is not in {uri}; logging a new run", file=sys.stderr)
                rid = None
        if not rid:
            rid = child_run(client, model_meta.get("mlflow_run_id"), "dsm-report", workspace,
                            f"report-{folder.parent.name}", "report")
            created = True
        client.log_artifacts(rid, str(folder), artifact_path="report")
        for k, v in _numeric_metrics(metrics).items():
            client.log_metric(rid, k, v)
        if created:
            client.set_terminated(rid)
        return rid

    return best_effort("report", uri, log)


def _model_info(path: str | None, *, required: bool
                ) -> tuple[dict, tuple[int, ...] | None, tuple[float, float] | None, str | None]:
    """(meta, event shape, training t range, training split ``data.path``) of a model bundle; with
    ``required`` a bad file raises, else it is ignored."""
    if not path:
        return {}, None, None, None
    if not Path(path).is_file() and not required:
        return {}, None, None, None
    from dsm.core.bundle import load_model

    try:
        b = load_model(path)
    except (ValueError, FileNotFoundError):
        if required:
            raise
        return {}, None, None, None
    return dict(b.meta), tuple(b.shape), b.t_range, b.config["data"]["path"]


def _studies(args: argparse.Namespace, t_range: tuple[float, float] | None):
    """The model-based sections' settings; the model itself only with --model."""
    from dsm.report.build import Studies

    model = None
    if args.model:
        from dsm.api import load

        model = load(args.model)
    return Studies(model=model, n_refs=args.ref_images, n_noise=args.noise_samples, affine_grid=args.affine_grid,
                   t_range=t_range)


def _baseline_options(args: argparse.Namespace, t_range: tuple[float, float] | None, model_data: str | None):
    """--baselines and friends; the training split and t_min default to the --model bundle's config."""
    from dsm.report.baselines import BaselineOptions, parse_ks

    opts = BaselineOptions(parse_ks(args.baselines))
    if args.baseline_max_train is not None:
        opts.max_train = args.baseline_max_train
    if args.reg_covar is not None:
        opts.reg_covar = args.reg_covar
    if args.train_data:
        opts.train_data = args.train_data
    elif model_data:
        opts.train_data, opts.train_source = model_data, "the model's config data.path"
    elif args.model:
        opts.train_source = "the model's config names no data.path (a built-in data.dataset)"
    if args.smooth_t is not None:
        opts.t_min, opts.t_min_source = args.smooth_t, "--smooth-t"
    elif t_range is not None:
        opts.t_min, opts.t_min_source = t_range[0], "the model's noise.t_min"
    if opts.ks and not opts.train_data and args.model:
        raise ValueError(f"--baselines needs the training split: {opts.train_source}; pass --train-data PATH")
    return opts


def _report(args: argparse.Namespace) -> int:
    from dsm.report.build import build_report
    from dsm.report.scores import resolve_scores_dir

    meta, shape, t_range, model_data = _model_info(args.model, required=True)
    opt_file = resolve_scores_dir(args.scores_dir) / "scores.json"
    info = json.loads(opt_file.read_text()) if opt_file.is_file() else {}  # bad JSON: a ValueError, exit 2
    if not args.model:  # the scored model, when its file is still there: only for MLflow nesting
        meta, _, _, _ = _model_info(info.get("options", {}).get("model"), required=False)
    baselines = _baseline_options(args, t_range, model_data)
    result = build_report(args.scores_dir, args.out, top=args.top, data=args.data, shape=shape,
                          tail=args.gumbel_tail, train_scores=args.train_scores, studies=_studies(args, t_range),
                          baselines=baselines)
    folder = Path(result["folder"])
    e = result["entropy"]
    print(f"{result['n']} images, d = {result['d']}: mean log p {e['mean_logp_db_per_dim']:.3f} dB/dim, "
          f"differential entropy {e['entropy_bits_per_dim']:.4f} bits/dim, "
          f"max/min probability 10^{e['log10_max_min_ratio']:.1f}")
    if "gumbel" in result:
        g, v = result["gumbel"], result["gev"]
        print(f"Gumbel ({g['tail']} tail): location {g['loc']:.3f}, scale {g['scale']:.3f} dB/dim, "
              f"KS {g['ks_stat']:.4f}; GEV: xi {v['xi']:+.3f}, KS {v['ks_stat']:.4f}")
    if "cross_entropy" in result:
        c = result["cross_entropy"]
        print(f"NLL train {c['train_bpd']:.4f} +- {c['train_stderr']:.4f}, test {c['test_bpd']:.4f} +- "
              f"{c['test_stderr']:.4f} bits/dim (test - train {c['gap_bpd']:+.4f} +- {c['gap_stderr']:.4f})")
    if "baselines" in result:
        print(f"baselines: {result['baselines']['verdict']}")
    _log_report(args.workspace, folder, info, meta, result)
    print(folder)
    return 0


def _sample(args: argparse.Namespace) -> int:
    import numpy as np

    from dsm.api import from_bundle
    from dsm.core.bundle import load_model
    from dsm.core.precision import precision_scope
    from dsm.core.sample import sample
    from dsm.report import figures

    if min(args.n, args.steps, args.batch_size) < 1:
        raise ValueError(f"--n, --steps and --batch-size must be >= 1, got {args.n}, {args.steps}, {args.batch_size}")
    if not 0 <= args.eta <= 1:
        raise ValueError(f"--eta must be in [0, 1], got {args.eta}")
    device = args.device
    bundle = load_model(args.model, map_location=device)
    model = from_bundle(bundle, args.model)
    t_min = args.t_min if args.t_min is not None else bundle.t_range[0]
    t_max = args.t_max if args.t_max is not None else bundle.t_range[1]
    if not 0 < t_min < t_max:
        raise ValueError(f"need 0 < --t-min < --t-max, got {t_min:g} and {t_max:g}")
    mean = args.mean if args.mean is not None else (0.5 if model.eight_bit else 0.0)
    out = Path(args.out or Path(args.model).resolve().parent / "samples" /
               f"seed{args.seed}-n{args.n}-steps{args.steps}-eta{args.eta:g}").expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    with precision_scope(args.precision, device):
        x = sample(model, args.n, seed=args.seed, steps=args.steps, t_max=t_max, t_min=t_min, mean=mean,
                   eta=args.eta, batch_size=args.batch_size, device=device,
                   progress=not args.quiet).cpu().float().numpy()
    np.save(out / "samples.npy", x)
    title = f"{args.n} samples, seed {args.seed}, {args.steps} steps"
    if figures.is_image_shape(x.shape[1:]):
        figures.image_grid(x[:64], out / "samples.png", ncol=8, suptitle=title)
    else:
        figures.scatter_pairs(x, out / "samples.png", title)
    (out / "sample.json").write_text(json.dumps(
        {"model": str(Path(args.model).resolve()), "n": args.n, "seed": args.seed, "steps": args.steps,
         "eta": args.eta, "t_max": t_max, "t_min": t_min, "mean": mean, "shape": list(x.shape[1:]),
         "precision": args.precision, "device": device,
         "scheme": "DDIM in noise variance (dsm.core.sample), geometric t schedule, returns D(y, t_min)"}, indent=1))
    print(f"{args.n} samples of shape {tuple(x.shape[1:])}: pixel mean {x.mean():.4f}, "
          f"{float((x < 0).mean() + (x > 1).mean()) * 100:.2f} % of values outside [0, 1]")
    print(out)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from dsm.report.compare import compare, format_table, log_comparison

    rows, out = compare(args.runs, args.workspace)
    print(format_table(rows))
    log_comparison(rows, out, args.workspace)
    print(out)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    rep = sub.add_parser("report", help="figures and statistics of a `dsm score` output: report.md + PNGs",
                         description="Turn a `dsm score` output into a report folder: log p histogram with a "
                                     "Gumbel and GEV fits, entropies and the typical set, train vs test "
                                     "cross-entropy (--train-scores), the most/least probable images, d_eff against "
                                     "t, log p against Haar sparsity, with --model log p under affine transforms "
                                     "and along the noise, and with --baselines classical Gaussian-mixture "
                                     "baselines on the same images. Logs the folder to MLflow. "
                                     "The last line printed is the report folder. Sections: docs/analysis.md.")
    rep.add_argument("scores_dir", metavar="SCORES_DIR",
                     help="dsm score's --out folder (or its parts/ folder), or its s3:// / gs:// URL")
    rep.add_argument("--model", default=None, help="the scored model: its shape (for vector-stored images), "
                                                   "training run (MLflow nesting), and the model-based sections "
                                                   "(affine transforms, log p along the noise, histogram markers; "
                                                   "default: none, so no model-based sections)")
    rep.add_argument("--train-scores", default=None, metavar="DIR",
                     help="a dsm score folder of training images scored by the same model: train vs test "
                          "cross-entropy (the paper's Table 2; default: none)")
    rep.add_argument("--ref-images", type=int, default=15,
                     help="reference images evenly spaced in log p for the model-based sections "
                          "(default 15, the paper's)")
    noise_samples = rep.add_argument("--noise-samples", type=int, default=16,
                                     help="noise draws per reference image for E[log p(y, t) | x] (default 16; "
                                          "the paper: 1000)")
    add_old_name(rep, "--n-noise", noise_samples)
    rep.add_argument("--affine-grid", type=int, default=21,
                     help="points per axis of the contrast/offset grid on [0, 1] (default 21; the paper: 101)")
    rep.add_argument("--baselines", default=None, metavar="K,K,...",
                     help="classical baselines to fit and compare on the same images: Gaussian mixtures with "
                          "these numbers of full-covariance components (1 = the full Gaussian), e.g. 1,10 "
                          "(default: none)")
    rep.add_argument("--train-data", default=None, metavar="PATH",
                     help="training split the baselines are fitted on (shards, .npy or image folder; "
                          "default: the --model config's data.path)")
    # Defaults (None here) live in dsm.report.baselines / dsm.stats.baselines; not imported at parser time (torch).
    rep.add_argument("--baseline-max-train", type=int, default=None, metavar="N",
                     help="fit on a seeded subsample of at most N training images (default 10000)")
    rep.add_argument("--reg-covar", type=float, default=None,
                     help="added to each baseline covariance's diagonal (default 1e-6, scikit-learn's)")
    smooth_t = rep.add_argument("--smooth-t", type=float, default=None, metavar="T",
                                help="noise variance the baselines are smoothed to for their smoothed columns "
                                     "(default: the --model config's noise.t_min; without either they are left out)")
    add_old_name(rep, "--t-min", smooth_t)
    rep.add_argument("--data", default=None, help="the scored data, when it moved (default: scores.json's)")
    rep.add_argument("--out", default=None,
                     help="report folder (default SCORES_DIR/report; for a URL, ./report-NAME here)")
    rep.add_argument("--top", type=int, default=8, help="images in the most/least probable grids (default 8)")
    rep.add_argument("--gumbel-tail", choices=("right", "left"), default="right",
                     help="Gumbel orientation (default right: the paper's right-skewed log p)")
    add_workspace(rep)
    rep.set_defaults(func=_report)
    _register_sample(sub)
    _register_compare(sub)


def _register_sample(sub: argparse._SubParsersAction) -> None:
    smp = sub.add_parser("sample", help="draw samples from an energy model by reverse diffusion",
                         description="Reverse diffusion (DDIM in noise variance; eta=0 probability flow, 1 "
                                     "ancestral) from t_max to t_min on a geometric schedule. The start noise "
                                     "depends on --seed only, so two models given one seed start alike. Writes "
                                     "samples.npy and samples.png; the last line printed is the output folder.")
    smp.add_argument("model", help="exported model (dsm train's model.pt); log Z is not needed")
    smp.add_argument("--n", type=int, required=True, help="number of samples")
    smp.add_argument("--seed", type=int, required=True, help="seed of the start noise (and of eta > 0 noise)")
    smp.add_argument("--steps", type=int, default=100, help="denoising steps (default 100)")
    smp.add_argument("--eta", type=float, default=0.0, help="0 deterministic (default), 1 ancestral")
    smp.add_argument("--t-max", type=float, default=None, help="start noise variance (default: training t_max)")
    smp.add_argument("--t-min", type=float, default=None, help="last noise variance (default: training t_min)")
    smp.add_argument("--mean", type=float, default=None, help="centre of the start noise (default 0.5 for images, 0)")
    smp.add_argument("--batch-size", type=int, default=64, help="samples drawn at once (default 64)")
    device = smp.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                              help="where this process draws the samples (default cpu)")
    add_old_name(smp, "--gpu", device, const="cuda")
    add_precision(smp, "the denoiser evaluations")
    smp.add_argument("--out", default=None, help="output folder (default MODEL_DIR/samples/seed..-n..-steps..)")
    smp.add_argument("--quiet", action="store_true", help="no progress bar")
    smp.set_defaults(func=_sample)


def _register_compare(sub: argparse._SubParsersAction) -> None:
    cmp = sub.add_parser("compare", help="training runs side by side: held-out NLL, log Z, PSNR curve, step time",
                         description="Compare training runs from the workspace's MLflow store: the last held-out "
                                     "NLL (bits/dim) and log Z with their standard errors, the median time per "
                                     "step, and the denoiser's output PSNR at each input PSNR; a figure of NLL "
                                     "against step and of output against input PSNR. A sweep's name stands for "
                                     "its trials. The last line printed is the folder with compare.csv and "
                                     "compare.png (also logged to the dsm-compare experiment).")
    cmp.add_argument("runs", nargs="+", metavar="RUN_OR_SWEEP", help="run names (or ids), or `dsm tune` sweep names")
    add_workspace(cmp)
    cmp.set_defaults(func=_compare)
