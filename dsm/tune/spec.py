"""A sweep spec: one YAML file validated into :class:`SweepSpec` before anything starts.

A spec names a base training config (a path relative to the spec), fixed overrides, a search
space over any training-config field (dotted keys, as on the ``dsm train`` command line), the
metric and mode, the trial count, the scheduler and search algorithm, and the resources per
trial. Every field of the space is checked against :class:`dsm.train.config.TrainConfig`'s
schema, and every value the search can produce is validated in a full training config, so a
misspelled field or an impossible value fails here, naming it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from dsm.plumbing.config import StrictModel


class Param(StrictModel):
    """One dimension of the search space: exactly one of the fields is given.

    grid: every value is tried (Tune's grid_search); choice: one value drawn per trial;
    uniform / loguniform: [low, high] drawn per trial; randint: integers in [low, high).
    """

    grid: list[Any] | None = Field(None, description="values, each tried (every combination with the other grid "
                                                     "fields)")
    choice: list[Any] | None = Field(None, description="values, one drawn per trial (enumerated like grid under "
                                                       "search grid)")
    uniform: tuple[float, float] | None = Field(None, description="[low, high]: a number drawn uniformly per trial")
    loguniform: tuple[float, float] | None = Field(None, description="[low, high], low > 0: a number drawn "
                                                                     "uniformly in log per trial")
    randint: tuple[int, int] | None = Field(None, description="[low, high): an integer drawn per trial")

    @model_validator(mode="after")
    def _one(self) -> Param:
        given = [k for k in ("grid", "choice", "uniform", "loguniform", "randint") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of grid, choice, uniform, loguniform, randint"
                             + (f" (got {', '.join(given)})" if given else ""))
        kind = given[0]
        if kind in ("grid", "choice") and not getattr(self, kind):
            raise ValueError(f"{kind}: the list of values is empty")
        if kind in ("uniform", "loguniform", "randint"):
            lo, hi = getattr(self, kind)
            if not lo < hi:
                raise ValueError(f"{kind}: low ({lo}) must be < high ({hi})")
            if kind == "loguniform" and lo <= 0:
                raise ValueError(f"loguniform: low ({lo}) must be > 0")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("grid", "choice", "uniform", "loguniform", "randint") if getattr(self, k) is not None)

    def extremes(self) -> list[Any]:
        """Values that together exercise the validation of every value this can produce."""
        if self.kind in ("grid", "choice"):
            return list(getattr(self, self.kind))
        lo, hi = getattr(self, self.kind)
        return [lo, hi - 1] if self.kind == "randint" else [lo, hi]

    def is_log_scale(self) -> bool:
        """For figures: a log axis for loguniform, or for positive numbers spanning > 1 decade."""
        if self.kind == "loguniform":
            return True
        vals = self.extremes()
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals) and all(v > 0 for v in vals):
            return max(vals) / min(vals) > 10
        return False


class SchedulerSpec(StrictModel):
    """Early stopping. ASHA compares trials at equal training steps (``time_attr = step``)."""

    kind: Literal["asha", "fifo"] = Field("asha", description="asha: stop trials that fall behind at equal "
                                                              "steps; fifo: run every trial to the end")
    grace_period: int = Field(100, ge=1, description="steps before a trial can be stopped")
    reduction_factor: int = Field(2, ge=2, description="ASHA: about 1 in reduction_factor trials goes on at each "
                                                       "rung (rungs at grace_period x reduction_factor^k steps)")


class ResourcesSpec(StrictModel):
    """Per trial: its Ray Train workers, and what the small function that drives them reserves.

    The trial function reserves no CPU by default (a little memory only) and takes a training
    slot before it starts its workers (dsm.tune.slots), so trials waiting for their turn
    never hold CPUs that a running trial's workers need (docs/design.md section 8's 0.2 CPU per
    trial deadlocked a restored sweep on 2 CPUs).
    """

    trial_cpu: float = Field(0.0, ge=0, description="CPUs reserved by the function that drives one trial")
    trial_memory_mb: int = Field(256, ge=1, description="memory reserved by that function (MiB)")
    workers: int | None = Field(None, ge=1, description="Ray Train workers per trial (default: the base config's)")
    cpus_per_worker: float | None = Field(None, gt=0, description="CPUs per Ray Train worker (default: the base "
                                                                  "config's scaling.cpus_per_worker)")
    gpu: bool | None = Field(None, description="one GPU per worker (default: the base config's scaling.gpu)")


class TrackingSpec(StrictModel):
    """MLflow tracking of the sweep: a parent run, with each trial's run nested under it."""

    enabled: bool = Field(True, description="log the sweep's run and its trials' runs to MLflow (sets every "
                                            "trial's tracking.enabled)")
    experiment: str = Field("dsm-tune", description="MLflow experiment of the sweep and its trials (sets every "
                                                    "trial's tracking.experiment)")


class SweepSpec(StrictModel):
    """A sweep. ``name`` fixes the sweep folder and MLflow parent run: re-running resumes it."""

    name: str | None = Field(None, description="sweep name (default: the spec's stem and a hash of its content)")
    base: str = Field(..., description="training config (YAML), relative to the spec file")
    overrides: dict[str, Any] = Field(default_factory=dict, description="fixed dotted-key overrides for every trial")
    space: dict[str, Param] = Field(..., description="dotted training-config field -> distribution")
    metric: str = Field("eval/nll_bpd", description="reported metric the scheduler and search act on (the "
                                                    "default: held-out NLL in bits/dim)")
    mode: Literal["min", "max"] = Field("min", description="whether a lower (min) or higher (max) metric is better")
    samples: int = Field(1, ge=1, description="random draws (search random/optuna), or repeats of the grid "
                                              "with seeds seed, seed+1, ... (search grid)")
    search: Literal["random", "grid", "optuna"] = Field(
        "random", description="random: values drawn independently; grid: every combination of the grid and "
                              "choice lists; optuna: adaptive draws by Optuna (no grid lists)")
    seed: int = Field(0, description="seed of the search's draws, and the training seed of the first grid repeat "
                                     "(search grid with samples > 1)")
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec, description="early stopping")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="resources per trial")
    max_concurrent: int = Field(0, ge=0, description="trials training at once (0: as many as the cluster's "
                                                      "CPUs and GPUs hold, counting what its autoscaler can add)")
    tracking: TrackingSpec = Field(default_factory=TrackingSpec, description="MLflow tracking of the sweep")

    @model_validator(mode="after")
    def _space(self) -> SweepSpec:
        if not self.space:
            raise ValueError("space: the search space is empty; give at least one field to sweep")
        if self.search == "grid":
            bad = [k for k, p in self.space.items() if p.kind not in ("grid", "choice")]
            if bad:
                raise ValueError(f"search grid enumerates values: {', '.join(bad)} must be grid or choice lists")
        if self.search == "optuna":
            bad = [k for k, p in self.space.items() if p.kind == "grid"]
            if bad:
                raise ValueError(f"search optuna samples adaptively: use choice instead of grid for {', '.join(bad)}")
        clash = sorted(set(self.space) & set(self.overrides))
        if clash:
            raise ValueError(f"fields both swept and fixed in overrides: {', '.join(clash)}")
        return self

    def resource_overrides(self) -> dict[str, Any]:
        """The resources section as training-config overrides (scaling.*)."""
        r = self.resources
        out = {}
        if r.workers is not None:
            out["scaling.workers"] = r.workers
        if r.cpus_per_worker is not None:
            out["scaling.cpus_per_worker"] = r.cpus_per_worker
        if r.gpu is not None:
            out["scaling.gpu"] = r.gpu
        return out


def field_exists(model_cls: type, dotted: str) -> str | None:
    """None when ``dotted`` names a field of the pydantic model (nested through sub-models),
    else a message naming the first unknown part and the known ones there."""
    from pydantic import BaseModel

    cls = model_cls
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        fields = cls.model_fields
        if part not in fields:
            where = ".".join(parts[:i]) or "the top level"
            return f"{dotted!r}: no field {part!r} in {where} (known: {', '.join(fields)})"
        ann = fields[part].annotation
        if i < len(parts) - 1:
            if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
                return f"{dotted!r}: {'.'.join(parts[:i + 1])!r} is a value, not a section"
            cls = ann
    return None


def sweep_name(spec: SweepSpec, stem: str, spec_text: str, base_text: str, extra: list[str]) -> str:
    """``name``, else ``<stem>-<hash8>`` of the spec, its base config and the overrides: the
    same command finds the same sweep (and resumes it)."""
    import hashlib

    if spec.name:
        return spec.name
    h = hashlib.sha256("\0".join([spec_text, base_text, *extra]).encode()).hexdigest()[:8]
    return f"{stem}-{h}"


def nice(v: Any) -> str:
    """A short text for a swept value (tables and dry runs)."""
    if isinstance(v, float):
        return f"{v:.4g}" if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4) else f"{v:g}"
    return str(v)

