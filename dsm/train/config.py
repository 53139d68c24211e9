"""The training config: one YAML file validated into :class:`TrainConfig` before anything starts.

Everything a run needs is here, so that the resolved config (saved in every checkpoint and
export, and logged to MLflow) is enough to rebuild the model and repeat the run. Shipped
examples live in ``configs/``. Cross-field checks that need the data (the image size against
the UNet depth, the data path existing) are in :func:`dsm.train.build.check_buildable`,
which the CLI also runs before Ray or MLflow are touched.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import Field, field_validator, model_validator

from dsm.core.models import ModelConfig
from dsm.core.noise import T_SAMPLERS
from dsm.data.sources import DATASETS, PrepareConfig
from dsm.plumbing.config import StrictModel

# The paper's input PSNRs for the denoising table (Table 1): 90, 75, ..., -30 dB.
PAPER_PSNRS = [90.0 - 15.0 * i for i in range(9)]


class DataConfig(StrictModel):
    """Where the training and held-out data come from and how they are streamed."""

    dataset: str | None = Field(None, description="built-in data set, prepared under <workspace>/data when "
                                                  "path is not given (dsm data list)")
    prepare: PrepareConfig = Field(default_factory=PrepareConfig, description="options for a built-in data set")
    path: str | None = Field(None, description="training split: a shard folder, its manifest.json, or a .npy")
    eval_path: str | None = Field(None, description="held-out split (default: the 'test' split beside path)")
    batch_size: int = Field(64, ge=1, description="global batch, split evenly across workers")
    mode: Literal["resampled", "exact"] = Field(
        "resampled", description="resampled: shards drawn with replacement, about one pass over the data per "
                                 "epoch; exact: every sample once per epoch across ranks and loader processes "
                                 "(needs on_error raise, and at least ranks x loader processes shards)")
    flips: bool = Field(False, description="random horizontal flips of the training images, p = 1/2, seeded "
                                           "(images only)")
    shuffle_buffer: int = Field(1000, ge=0, description="samples held per loader process for shuffling "
                                                        "(0: shard order only)")
    loader_workers: int = Field(0, ge=0, description="DataLoader processes per training worker")
    on_error: Literal["raise", "skip"] = Field(
        "raise", description="an unreadable shard or sample: raise stops naming it; skip warns, counts it and "
                             "goes on (not with mode exact)")

    @field_validator("dataset")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        if v is not None and v not in DATASETS:
            raise ValueError(f"unknown dataset {v!r}; built-in: {', '.join(DATASETS)}")
        return v

    @model_validator(mode="after")
    def _source(self) -> DataConfig:
        if self.dataset is None and self.path is None:
            raise ValueError("give data.dataset (a built-in data set) or data.path (shards or a .npy)")
        if self.dataset is not None and self.path is not None:
            raise ValueError("give data.dataset or data.path, not both")
        return self


class ImportanceConfig(StrictModel):
    """``noise.sampler: importance``: log t drawn by the loss's second moment per bin
    (dsm.core.noise.LossSecondMoment)."""

    bins: int = Field(32, ge=1, description="equal bins of log t")
    decay: float = Field(0.99, ge=0, lt=1, description="per-step decay of the second-moment average")
    uniform_fraction: float = Field(0.1, gt=0, le=1, description="share of draws kept log-uniform")
    warmup: int = Field(10, ge=1, description="observations per bin before sampling adapts")


class NoiseConfig(StrictModel):
    """The noise variances t drawn for training: ``sampler`` on [t_min, t_max]."""

    t_min: float = Field(1e-9, gt=0, description="smallest noise variance t drawn (pixels in [0, 1]); the log and "
                                                 "linear time embeddings and the UNet's t-dependent scalings are "
                                                 "floored at it")
    t_max: float = Field(1e3, gt=0, description="largest noise variance t drawn; also the default noise variance "
                                                "of the log Z estimate")
    sampler: str = Field("log_uniform", description="log_uniform (the paper), stratified_log_uniform, or "
                                                    "importance (by the loss's second moment; unbiased)")
    importance: ImportanceConfig = Field(default_factory=ImportanceConfig,
                                         description="options of sampler importance (ignored by the others)")

    @field_validator("sampler")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in T_SAMPLERS:
            raise ValueError(f"unknown t sampler {v!r}; known: {sorted(T_SAMPLERS)}")
        return v

    @model_validator(mode="after")
    def _order(self) -> NoiseConfig:
        if self.t_min >= self.t_max:
            raise ValueError(f"t_min ({self.t_min:g}) must be < t_max ({self.t_max:g})")
        return self


class LossConfig(StrictModel):
    """loss = (t/d)^a l_DSM + lambda (t/d)^b l_TSM [+ heat_weight (t R/d)^2] (the score baseline
    uses the plain denoising loss and ignores these)."""

    tsm_weight: float = Field(1.0, ge=0, description="lambda; 0 is single score matching")
    dsm_exponent: float = Field(1.0, description="a: the denoising term l_DSM is weighted by (t/d)^a "
                                                 "(t: noise variance, d: data dimension)")
    tsm_exponent: float = Field(2.0, description="b: the time score term l_TSM is weighted by (t/d)^b")
    heat_weight: float = Field(0.0, ge=0, description="weight of the heat-equation residual regularizer "
                                                      "(Hutchinson Laplacian; costs a third derivative)")


class OptimConfig(StrictModel):
    """Adam, with a constant, step (halving) or cosine learning rate."""

    lr: float = Field(5e-4, gt=0, description="Adam learning rate (the initial one under a schedule)")
    schedule: Literal["constant", "halving", "cosine"] = Field(
        "constant", description="learning rate schedule: constant; halving (lr x 0.5 every halve_every steps); "
                                "cosine (from lr down to lr x final_lr_fraction at the last step)")
    halve_every: int = Field(100_000, ge=1, description="halving: steps between lr halvings")
    final_lr_fraction: float = Field(0.01, ge=0, le=1, description="cosine: final lr / lr")
    max_grad_norm: float | None = Field(None, gt=0, description="clip the global L2 norm of the gradient to this "
                                                                "(none: no clipping)")
    max_bad_steps: int = Field(20, ge=1, description="stop after this many non-finite steps in a row")
    ema_decay: float | None = Field(
        None, gt=0, lt=1, description="keep an exponential moving average of the weights with this decay "
        "(e.g. 0.999); evaluation, normalization and the exported model then use the average")
    ema_warmup: bool = Field(False, description="ramp the EMA decay as min(ema_decay, (1 + n) / (10 + n)) "
                                                "after n updates, so that the average forgets the initial weights "
                                                "(no effect without ema_decay)")


class EvalConfig(StrictModel):
    """Held-out evaluation, run on rank 0 at every checkpoint (and at the end)."""

    enabled: bool = Field(True, description="evaluate on held-out data at every checkpoint: the eval/* "
                                            "metrics, and the choice of model-best.pt and of the checkpoints kept")
    samples: int = Field(512, ge=2, description="held-out examples used (the first N of the split)")
    batch_size: int = Field(256, ge=1, description="held-out examples per batch, in the evaluation and in "
                                                   "the final log Z estimate")
    psnrs: list[float] = Field(default_factory=lambda: list(PAPER_PSNRS), description="input PSNRs in dB")
    log_z_t: float | None = Field(None, gt=0, description="noise variance of the log Z estimate (default t_max)")
    grid: bool = Field(True, description="log a PNG grid of denoised held-out examples")
    # Self-consistency metrics (dsm.core.consistency; energies only). The defaults add about 3 s per
    # evaluation of the smoke run (2 CPUs); dsm score measures the same with more images and steps.
    consistency: bool = Field(True, description="log the consistency/* metrics: log Z spread over large t, "
                                                "energy vs PF-ODE gap, heat-equation residual by band")
    log_z_ts: list[float] | None = Field(None, description="noise variances of the log Z spread (default "
                                                           "t_max/10, t_max/3, t_max)")
    ode_images: int = Field(2, ge=0, description="held-out images of the energy vs PF-ODE gap (0: skip it)")
    ode_steps: int = Field(32, ge=1, description="Heun steps of that ODE, uniform in log t")
    heat_examples: int = Field(32, ge=0, description="held-out examples per band for the heat residual "
                                                     "and the near-Gaussian check (0: skip both)")
    hutchinson_probes: int = Field(2, ge=2, description="Rademacher probes per example for Laplacians "
                                                        "when d > 16 (even)")

    @field_validator("log_z_ts")
    @classmethod
    def _two_ts(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (len(v) < 2 or not all(t > 0 for t in v)):
            raise ValueError(f"give at least two noise variances > 0, got {v}")
        return v

    @field_validator("hutchinson_probes")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"must be even (two halves give an unbiased squared residual), got {v}")
        return v


class CheckpointConfig(StrictModel):
    """Ray Train checkpoints: where a run resumes from, and when it reports metrics (to Tune too)."""

    every: int = Field(500, ge=1, description="steps between checkpoints (and evaluations)")
    num_to_keep: int = Field(2, ge=1, description="checkpoints kept: the best by held-out NLL when an energy is "
                                                  "evaluated, else the most recent (the latest is kept for resuming)")


class ScalingConfig(StrictModel):
    """The Ray Train workers of a run, checked against the cluster (not this machine) before they start."""

    workers: int = Field(2, ge=1, description="Ray Train workers (ranks); data.batch_size is split across them")
    gpu: bool = Field(False, description="one GPU per worker (NCCL); a node that gives a GPU without "
                                         "usable CUDA fails the run in one line")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per worker (also its torch threads)")
    memory_per_worker_gb: float | None = Field(None, gt=0, description="memory reserved per worker in GiB "
                                                                       "(none: no reservation)")
    max_failures: int = Field(3, ge=0, description="worker failures survived by restarting from a checkpoint")
    resource_timeout_s: float = Field(900.0, gt=0, description="seconds to wait for a cluster that can grow "
                                                               "(an autoscaler) to provide the workers, then fail "
                                                               "naming what never came")

    def worker_resources(self) -> dict[str, float]:
        """One worker's Ray resources (``memory`` in bytes), as Ray Train reserves them."""
        out = {"CPU": self.cpus_per_worker}
        if self.gpu:
            out["GPU"] = 1.0
        if self.memory_per_worker_gb:
            out["memory"] = self.memory_per_worker_gb * 1024**3
        return out


class TrackingConfig(StrictModel):
    """MLflow tracking of the run ($MLFLOW_TRACKING_URI, else the workspace's mlflow.db)."""

    enabled: bool = Field(True, description="log params, metrics and artifacts to MLflow "
                                            "(an unreachable server is reported once, and training goes on)")
    experiment: str = Field("dsm-train", description="MLflow experiment the run is logged under")


class TrainConfig(StrictModel):
    """A training run. ``name`` fixes the run folder and MLflow run: re-running resumes it."""

    name: str | None = Field(None, description="run name (default: derived from the config, so the same "
                                               "command resumes the same run)")
    seed: int = Field(0, description="seed of the initial weights, the data order and flips, and the training "
                                     "noise")
    steps: int = Field(2000, ge=1, description="training steps (optimizer updates; a skipped non-finite step "
                                               "counts)")
    log_every: int = Field(50, ge=1, description="steps between training-metric rows")
    precision: Literal["fp32", "tf32", "bf16"] = Field(
        "fp32", description="arithmetic of the training steps: fp32 (float32, TF32 off), tf32 (TF32 matmuls and "
                            "cuDNN convolutions on GPUs; the same as fp32 on CPU) or bf16 (the network body under "
                            "bfloat16 autocast; U and its reductions stay float32). Evaluation, log Z and the "
                            "export always run in fp32; a run may be resumed at another precision")
    data: DataConfig = Field(..., description="the training and held-out data")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the network")
    noise: NoiseConfig = Field(default_factory=NoiseConfig, description="the noise variances t drawn for training")
    loss: LossConfig = Field(default_factory=LossConfig, description="the weights of the loss terms")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="the optimizer and its schedule")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="the held-out evaluation")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="checkpoints")
    scaling: ScalingConfig = Field(default_factory=ScalingConfig, description="the Ray Train workers")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow tracking")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c in v for c in '/\\:*?"<>| ') or v.startswith(".")):
            raise ValueError(f"name {v!r} must be a plain folder name (no spaces, slashes or leading dot)")
        return v

    @model_validator(mode="after")
    def _batch_split(self) -> TrainConfig:
        if self.data.batch_size % self.scaling.workers:
            raise ValueError(f"data.batch_size ({self.data.batch_size}) must be divisible by scaling.workers "
                             f"({self.scaling.workers}): each worker takes an equal share")
        return self

    @property
    def per_worker_batch(self) -> int:
        return self.data.batch_size // self.scaling.workers

    def fingerprint(self) -> str:
        """8 hex digits of the resolved config (without the name): the default run name's suffix."""
        blob = json.dumps(self.model_dump(mode="json", exclude={"name"}), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:8]

    def run_name(self, stem: str = "train") -> str:
        return self.name or f"{stem}-{self.fingerprint()}"
