"""Exact densities with closed forms for every quantity dsm estimates.

Under the heat flow a Gaussian stays Gaussian, ``p(., t) = N(mu, Sigma + t I)``, and a
mixture stays a mixture of the flowed components, so U(y, t) = -log p(y, t), its scores,
the denoiser and (for a Gaussian) d_eff are exact. These classes are :class:`Energy`
subclasses with ``log_z = 0``: pass them anywhere a trained model goes.

All computations run in float64 internally; outputs come back in the input dtype.
"""

from __future__ import annotations

import math

import torch

from dsm.core.energy import Energy, Scores

LOG_2PI = math.log(2 * math.pi)


class GaussianMixture(Energy):
    """sum_k w_k N(mu_k, Sigma_k) on R^d.

    weights: (K,), positive (normalized here); means: (K, d); covs: (K, d, d) symmetric
    positive definite, or (K, d) for diagonal covariances, or (K,) for isotropic ones.
    """

    def __init__(self, weights, means, covs):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 2:
            raise ValueError(f"means must be (K, d), got shape {tuple(means.shape)}")
        k, d = means.shape
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (k,) or not (weights > 0).all():
            raise ValueError(f"weights must be {k} positive numbers, got {weights.tolist()}")
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if covs.shape == (k,):
            covs = covs[:, None, None] * torch.eye(d, dtype=torch.float64)
        elif covs.shape == (k, d):
            covs = torch.diag_embed(covs)
        elif covs.shape != (k, d, d):
            raise ValueError(f"covs must be (K,), (K, d) or (K, d, d) with K={k}, d={d}; got {tuple(covs.shape)}")
        if not torch.allclose(covs, covs.transpose(1, 2)):
            raise ValueError("covariances must be symmetric")
        evals, evecs = torch.linalg.eigh(covs)
        if not (evals > 0).all():
            raise ValueError(f"covariances must be positive definite; smallest eigenvalue {float(evals.min()):g}")
        super().__init__((d,))
        self.register_buffer("log_w", (weights / weights.sum()).log())
        self.register_buffer("means", means)
        self.register_buffer("covs", covs)
        self.register_buffer("evals", evals)  # (K, d)
        self.register_buffer("evecs", evecs)  # (K, d, d), columns are eigenvectors

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    # -- per component, in float64: w = V^T (y - mu) in each component's eigenbasis
    def _components(self, y: torch.Tensor, t: torch.Tensor):
        y64, t64 = y.double(), t.double()
        w = torch.einsum("kij,bki->bkj", self.evecs, y64[:, None, :] - self.means[None])  # (B, K, d)
        lam_t = self.evals[None] + t64[:, None, None]  # (B, K, d)
        u_k = 0.5 * (w.square() / lam_t).sum(-1) + 0.5 * (LOG_2PI + lam_t.log()).sum(-1)  # (B, K)
        return w, lam_t, u_k

    def energy(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Exact -log p(y, t), shape (B,)."""
        _, _, u_k = self._components(y, t)
        return (-torch.logsumexp(self.log_w - u_k, dim=1)).to(y.dtype)

    def scores(self, y: torch.Tensor, t: torch.Tensor, create_graph: bool = False) -> Scores:
        """Closed-form U, grad_y U and dU/dt (differentiable in y when y requires grad)."""
        self.check_inputs(y, t)
        w, lam_t, u_k = self._components(y, t)
        logits = self.log_w - u_k
        u = -torch.logsumexp(logits, dim=1)
        r = torch.softmax(logits, dim=1)  # (B, K) responsibilities
        grad_k = torch.einsum("kij,bkj->bki", self.evecs, w / lam_t)  # Sigma_t^-1 (y - mu)
        dt_k = 0.5 * (1 / lam_t).sum(-1) - 0.5 * (w.square() / lam_t.square()).sum(-1)
        gy = (r[..., None] * grad_k).sum(1)
        gt = (r * dt_k).sum(1)
        out = Scores(u.to(y.dtype), gy.to(y.dtype), gt.to(y.dtype))
        if not create_graph:
            out = Scores(out.energy.detach(), out.grad_y.detach(), out.grad_t.detach())
        return out

    def _from_noise(self, k: int, z: torch.Tensor) -> torch.Tensor:
        """Component k's sample for standard normal z (n, d), float64: mu_k + Sigma_k^(1/2) z."""
        return self.means[k] + (self.evals[k].sqrt() * z) @ self.evecs[k].T

    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
        """n exact samples at t = 0, shape (n, d)."""
        comp = torch.multinomial(self.log_w.exp(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = torch.empty(n, self.dim, dtype=torch.float64)
        for k in range(self.n_components):  # per component: no (n, d, d) gather
            idx = comp == k
            x[idx] = self._from_noise(k, z[idx])
        return x.to(dtype)

    def mean(self) -> torch.Tensor:
        """Mixture mean, (d,)."""
        return (self.log_w.exp()[:, None] * self.means).sum(0)

    def covariance(self) -> torch.Tensor:
        """Mixture covariance, (d, d)."""
        w = self.log_w.exp()
        mu = self.mean()
        dev = self.means - mu
        return (w[:, None, None] * (self.covs + dev[:, :, None] * dev[:, None, :])).sum(0)

    def entropy_mc(self, n: int = 100_000, generator: torch.Generator | None = None) -> tuple[float, float]:
        """Monte Carlo differential entropy E[-log p(x)] in nats, with its standard error.

        Stratified by component (n_k proportional to w_k, combined with the exact weights),
        which removes the between-component variance that dominates a plain average.
        """
        w = self.log_w.exp()
        mean = var = 0.0
        for k in range(self.n_components):
            n_k = max(2, int(round(n * float(w[k]))))
            z = torch.randn(n_k, self.dim, generator=generator, dtype=torch.float64)
            x = self._from_noise(k, z)
            nll = self.energy(x, torch.zeros(n_k, dtype=torch.float64))
            mean += float(w[k] * nll.mean())
            var += float(w[k] ** 2 * nll.var() / n_k)
        return mean, math.sqrt(var)


class Gaussian(GaussianMixture):
    """N(mu, Sigma): a one-component mixture with extra closed forms (entropy, d_eff)."""

    def __init__(self, mean, cov):
        mean = torch.as_tensor(mean, dtype=torch.float64)
        cov = torch.as_tensor(cov, dtype=torch.float64)
        super().__init__(torch.ones(1), mean[None], cov[None])

    def entropy(self) -> float:
        """Exact differential entropy in nats: 1/2 sum_i log(2 pi e lambda_i)."""
        return float(0.5 * (LOG_2PI + 1 + self.evals[0].log()).sum())

    def mean_d_eff(self, t: float) -> float:
        """E_x d_eff(x, t) = sum_i lambda_i / (lambda_i + t)."""
        lam = self.evals[0]
        return float((lam / (lam + t)).sum())

    def d_eff(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """Exact per-example d_eff(x, t) = E_z ||x - D(x + sqrt(t) z, t)||^2 / t, shape (B,).

        = t ||(Sigma + t)^-1 (x - mu)||^2 + tr(Sigma^2 (Sigma + t)^-2); both estimators of
        :mod:`dsm.core.deff` converge to this for an exact Gaussian.
        """
        lam, v = self.evals[0], self.evecs[0]
        w = (x.double() - self.means[0]) @ v
        return (t * (w / (lam + t)).square().sum(1) + (lam / (lam + t)).square().sum()).to(x.dtype)


def scale_mixture(d: int, var_small: float = 1.0, var_large: float = 16.0) -> GaussianMixture:
    """The paper's Figure 1 density: 1/2 N(0, I) + 1/2 N(0, 16 I) in d dimensions."""
    zeros = torch.zeros(2, d, dtype=torch.float64)
    return GaussianMixture(torch.tensor([0.5, 0.5]), zeros, torch.tensor([var_small, var_large]))


def anisotropic_mixture(d: int, n_components: int = 4, seed: int = 0, spread: float = 2.0,
                        scale_range: tuple[float, float] = (0.05, 0.6)) -> GaussianMixture:
    """A random anisotropic Gaussian mixture used by the tests and the demo.

    Means are uniform in [-spread, spread]^d; each covariance has random axes and standard
    deviations log-uniform in ``scale_range``; weights are uniform-ish.
    """
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n_components, d, generator=g, dtype=torch.float64) * 2 - 1) * spread
    lo, hi = math.log(scale_range[0]), math.log(scale_range[1])
    stds = torch.exp(lo + (hi - lo) * torch.rand(n_components, d, generator=g, dtype=torch.float64))
    q, _ = torch.linalg.qr(torch.randn(n_components, d, d, generator=g, dtype=torch.float64))
    covs = q @ torch.diag_embed(stds.square()) @ q.transpose(1, 2)
    covs = 0.5 * (covs + covs.transpose(1, 2))
    weights = 0.5 + torch.rand(n_components, generator=g, dtype=torch.float64)
    return GaussianMixture(weights, means, covs)


def uniform_box_log_prob(x: torch.Tensor) -> torch.Tensor:
    """log p of the uniform density on [0, 1]^d: 0 inside, -inf outside; shape (B,)."""
    inside = ((x >= 0) & (x <= 1)).flatten(1).all(1)
    return torch.where(inside, 0.0, -math.inf).double()


__all__ = ["GaussianMixture", "Gaussian", "scale_mixture", "anisotropic_mixture"]
