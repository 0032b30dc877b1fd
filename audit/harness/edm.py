"""The EDM formulation (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
Models", Table 1, "Ours" column): preconditioning, loss weighting and the training noise distribution.

    D(x, s) = c_skip(s) x + c_out(s) F(c_in(s) x, c_noise(s))
    c_skip = s_d^2 / (s^2 + s_d^2)      c_out = s s_d / sqrt(s^2 + s_d^2)
    c_in   = 1 / sqrt(s^2 + s_d^2)      c_noise = ln(s) / 4
    lambda(s) = (s^2 + s_d^2) / (s s_d)^2   (= 1 / c_out^2)
    ln(s) ~ N(P_mean, P_std^2), P_mean = -1.2, P_std = 1.2

EDM's P_mean/P_std were tuned for image data with s_d = 0.5. We draw s = (s_d / 0.5) exp(P_mean + P_std n),
the same rescaling ``SamplerConfig.for_data`` applies to the sampler's sigma range, so training and
sampling are invariant under a rescaling of the data (x -> a x changes nothing but the units).

The random draws of one training step go through ``draw_sigma_noise`` with a caller-owned
``torch.Generator``; the single-model trainer and the vectorised one call it in the same order, which
is what makes them draw identical numbers per model.

Lower-variance estimators of the same loss (``draw_training_sigma_noise``; all unbiased for the EDM
objective E_{x, s, n} lambda(s) |D(x + s n, s) - x|^2):

- ``noise_draws = K``: K (sigma, noise) draws per data item, the B items of a step becoming B K denoiser
  evaluations. At a fixed B this removes (K - 1)/K of the noise-and-sigma part of the gradient variance;
  at a fixed number of evaluations B K it cannot beat B K distinct items (those also average the
  item-to-item part), so it pays where items are scarce or costly, not per FLOP.
- ``sigma_sampling = "stratified"``: stratified sampling of ln(sigma) (e.g. Owen, "Monte Carlo theory,
  methods and examples", 2013, Sec. 8.4): [0, 1) cut into N = B K equal strata, one uniform per stratum,
  pushed through the normal quantile function Phi^-1, then randomly permuted over the N evaluations. Each
  draw is still N(0, 1) at its own position, so the loss stays unbiased; the spread of the N draws over the
  sigma range is now fixed, which removes the between-strata part of the variance.
- ``proposal_std = s_q`` (importance sampling; Owen 2013, Ch. 9): ln(sigma) ~ q = N(P_mean, s_q^2) and each
  term weighted by p(sigma)/q(sigma) with p = N(P_mean, P_std^2), so E_q[w l] = E_p[l]. The weight's second
  moment E_q[w^2] = int p^2/q is finite only for s_q > P_std/sqrt(2): a narrower proposal gives the weighted
  loss infinite variance, so ``check_estimator_options`` refuses it.

Class-conditional training (classifier-free guidance, Ho & Salimans 2022, "Classifier-Free Diffusion
Guidance", Alg. 1): D(x, sigma, c) with the label c passed to the network; each training item's label is
replaced by the NULL label (index ``n_classes`` of the network's label table) with probability
``label_dropout`` (``drop_labels``), so one network learns both the conditional and the unconditional
denoiser. Its uniforms are drawn after a step's sigma and noise, and only by conditional runs, so an
unconditional run draws exactly the numbers it drew before.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch
from torch import nn

from diffaudit.errors import DiffauditError

P_MEAN = -1.2
P_STD = 1.2
SIGMA_DATA_REF = 0.5  # the s_d EDM's P_mean/P_std and sampler range were tuned for
SIGMA_SAMPLINGS = ("lognormal", "stratified")
# importance-sampling proposal widths accepted: above P_std/sqrt(2) the weights have finite variance (module
# doc); up to 3 P_std, |ln sigma| < 44 for every draw with |z| < 12 (all of them in practice), so sigma^2 and
# lambda(sigma) stay finite in float32 (beyond, a weight of 0 times lambda = inf gives NaN)
PROPOSAL_STD_RANGE = (P_STD / math.sqrt(2), round(3 * P_STD, 9))  # 3 * 1.2 is 3.5999...96 in floats


def edm_coefficients(sigma: torch.Tensor, sigma_data: float | torch.Tensor):
    """(c_skip, c_out, c_in, c_noise) of Table 1 for noise levels ``sigma`` (any shape, > 0)."""
    s2 = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / s2
    c_out = sigma * sigma_data / s2.sqrt()
    c_in = 1.0 / s2.sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def edm_weight(sigma: torch.Tensor, sigma_data: float | torch.Tensor) -> torch.Tensor:
    """Loss weight lambda(sigma) = (sigma^2 + s_d^2) / (sigma s_d)^2 (Table 1)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def precondition(
    net_fn, x: torch.Tensor, sigma: torch.Tensor, sigma_data, class_labels: torch.Tensor | None = None
) -> torch.Tensor:
    """D(x, sigma[, c]) = c_skip x + c_out F(c_in x, c_noise[, c]) for a raw network ``net_fn(x_in, c_noise)``.

    x: (B, *shape); sigma: (B,); class_labels: None (``net_fn`` is called with two arguments, as ever) or
    (B,) int64, passed on as the network's third argument. Shared by ``EDMPrecond`` and the functional (vmap)
    trainer.
    """
    sig = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    c_skip, c_out, c_in, c_noise = edm_coefficients(sig, sigma_data)
    if class_labels is None:
        F = net_fn(x * c_in, c_noise.reshape(-1))
    else:
        F = net_fn(x * c_in, c_noise.reshape(-1), class_labels)
    return c_skip * x + c_out * F.to(x.dtype)


class EDMPrecond(nn.Module):
    """Wraps a raw network F(x_in, c_noise[, class_labels]) into the denoiser D(x, sigma[, class_labels])
    (Karras 2022, Sec. 5)."""

    def __init__(self, net: nn.Module, sigma_data: float):
        super().__init__()
        self.net = net
        self.sigma_data = float(sigma_data)

    @property
    def n_classes(self) -> int | None:
        """The network's number of classes; None for an unconditional network."""
        return getattr(self.net, "n_classes", None)

    def forward(self, x: torch.Tensor, sigma, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, *shape) float; sigma: a float or a (B,) tensor of noise levels; class_labels: (B,) int64 for
        a conditional network, where None (and the label ``n_classes``) is the null label, the unconditional
        model; an unconditional network refuses labels."""
        if not torch.is_tensor(sigma):
            sigma = torch.full((x.shape[0],), float(sigma), dtype=x.dtype, device=x.device)
        elif sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        if class_labels is None and self.n_classes is not None:
            class_labels = torch.full((x.shape[0],), self.n_classes, dtype=torch.long, device=x.device)
        return precondition(self.net, x, sigma, self.sigma_data, class_labels)


def draw_normals(generator: torch.Generator, batch: int, shape: tuple[int, ...]):
    """One step's raw random draws, in a fixed order: normals for ln(sigma) (B,), then unit noise
    (B, *shape); float32, on the generator's device."""
    rnd = torch.randn(batch, generator=generator, device=generator.device)
    noise = torch.randn((batch, *shape), generator=generator, device=generator.device)
    return rnd, noise


def sigma_from_normal(rnd: torch.Tensor, sigma_data) -> torch.Tensor:
    """sigma = (s_d / 0.5) exp(P_mean + P_std rnd): EDM's log-normal, rescaled to the data (module doc)."""
    return (rnd * P_STD + P_MEAN).exp() * (sigma_data / SIGMA_DATA_REF)


def draw_sigma_noise(generator: torch.Generator, batch: int, shape: tuple[int, ...], sigma_data: float):
    """One step's sigma (B,) and unit noise (B, *shape), from ``draw_normals``."""
    rnd, noise = draw_normals(generator, batch, shape)
    return sigma_from_normal(rnd, float(sigma_data)), noise


def check_label_dropout(p) -> None:
    """Refuse a label-dropout probability outside [0, 1) in one sentence (1 would never show a label)."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p < 1:
        raise DiffauditError(
            f"label_dropout must be a probability in [0, 1), got {p!r}; e.g. 0.1 (classifier-free guidance)."
        )


def drop_labels(
    labels: torch.Tensor, n_classes: int, label_dropout: float, generator: torch.Generator
) -> torch.Tensor:
    """Classifier-free guidance's label dropout (Ho & Salimans 2022, Alg. 1): each of the B ``labels`` becomes
    the null label ``n_classes`` with probability ``label_dropout``, from B float32 uniforms of ``generator``;
    ``label_dropout == 0`` draws nothing and returns ``labels`` unchanged."""
    check_label_dropout(label_dropout)
    if not label_dropout:
        return labels
    u = torch.rand(labels.shape[0], generator=generator, device=generator.device).to(labels.device)
    return torch.where(u < float(label_dropout), torch.full_like(labels, int(n_classes)), labels)


class TrainingDraws(NamedTuple):
    """One training step's draws for B items with K draws each: N = B K denoiser evaluations."""

    item: torch.Tensor  # (N,) int64: evaluation j noises minibatch item item[j] (= j // K)
    sigma: torch.Tensor  # (N,) float32 noise levels
    noise: torch.Tensor  # (N, *shape) float32 unit noise
    weight: torch.Tensor  # (N,) float32 importance weights p(sigma)/q(sigma); exactly 1 without a proposal


def check_estimator_options(noise_draws, sigma_sampling, proposal_std) -> None:
    """Refuse estimator options ``draw_training_sigma_noise`` cannot honour, in one sentence."""
    if isinstance(noise_draws, bool) or not isinstance(noise_draws, int) or noise_draws < 1:
        raise DiffauditError(f"noise_draws must be a whole number >= 1, got {noise_draws!r}.")
    if sigma_sampling not in SIGMA_SAMPLINGS:
        raise DiffauditError(
            f"sigma_sampling must be one of {', '.join(SIGMA_SAMPLINGS)}, got {sigma_sampling!r}."
        )
    lo, hi = PROPOSAL_STD_RANGE
    if proposal_std != 0 and not lo < proposal_std <= hi:
        why = (
            f"at or below P_std/sqrt(2) = {lo:.3f} the importance weights have infinite variance"
            if proposal_std <= lo
            else "a wider proposal draws noise levels whose sigma^2 leaves float32's range"
        )
        raise DiffauditError(
            f"sigma_proposal_std must be 0 (off) or in ({lo:.3f}, {hi:.1f}], got {proposal_std!r} ({why})."
        )


def draw_training_sigma_noise(
    generator: torch.Generator,
    batch: int,
    shape: tuple[int, ...],
    sigma_data: float,
    *,
    noise_draws: int = 1,
    sigma_sampling: str = "lognormal",
    proposal_std: float = 0.0,
) -> TrainingDraws:
    """One step's draws for the estimators of the module docstring, all from ``generator``, on its device.

    N = ``batch * noise_draws`` evaluations; evaluation j uses minibatch item j // K. ln(sigma) = P_mean +
    s z (rescaled to ``sigma_data`` as ``sigma_from_normal``) with s = P_std, or ``proposal_std`` when > 0
    (then ``weight`` = p/q, else exactly 1), and z, in the generator's order:

    - ``"lognormal"``: N normals, then the noise (N, *shape). With K = 1 and no proposal these are
      ``draw_sigma_noise``'s calls, so the default reproduces it bit for bit;
    - ``"stratified"``: N float64 uniforms u_i, z = Phi^-1((i + u_i) / N) permuted by a ``randperm(N)``,
      then the noise: exactly one draw per stratum [i/N, (i+1)/N) of the normal's CDF.

    Pure in the generator and the arguments, so a vectorised trainer gets the same numbers by calling it
    once per model with that model's generator and stacking the results.
    """
    check_estimator_options(noise_draws, sigma_sampling, proposal_std)
    n_eval = int(batch) * int(noise_draws)
    dev = generator.device
    if sigma_sampling == "stratified":
        u = torch.rand(n_eval, dtype=torch.float64, generator=generator, device=dev)
        u = (torch.arange(n_eval, dtype=torch.float64, device=dev) + u) / n_eval
        # (i + u) / N can round to 1.0 for u just below 1 (and u = 0 gives 0): keep Phi^-1 finite
        u = u.clamp(torch.finfo(torch.float64).tiny, 1.0 - 2.0**-53)
        perm = torch.randperm(n_eval, generator=generator, device=dev)
        z = torch.special.ndtri(u)[perm].float()
    else:
        z = torch.randn(n_eval, generator=generator, device=dev)
    noise = torch.randn((n_eval, *shape), generator=generator, device=dev)
    if proposal_std:
        s_q = float(proposal_std)
        sigma = (z * s_q + P_MEAN).exp() * (float(sigma_data) / SIGMA_DATA_REF)
        # p/q of ln(sigma) = P_mean + s_q z (the Jacobian to sigma cancels), in float64
        zd = z.double()
        log_w = math.log(s_q / P_STD) - 0.5 * zd**2 * ((s_q / P_STD) ** 2 - 1.0)
        weight = log_w.exp().float()
    else:
        sigma = sigma_from_normal(z, float(sigma_data))
        weight = torch.ones(n_eval, device=dev)
    item = torch.arange(int(batch), device=dev).repeat_interleave(int(noise_draws))
    return TrainingDraws(item, sigma, noise, weight)


def edm_training_loss(
    denoise_fn, xb: torch.Tensor, draws: TrainingDraws, sigma_data, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """The loss of one step: minibatch ``xb`` (B, *shape) repeated per ``draws.item``, noised with ``draws``,
    importance-weighted, mean over the N = B K evaluations and the coordinates (``edm_loss_from_draws``).
    ``labels`` (B,): the items' class labels (after dropout) for a conditional ``denoise_fn``, repeated
    alongside the items; None for an unconditional one."""
    item = draws.item.to(xb.device)
    x = xb[item]
    sigma, noise = draws.sigma.to(xb.device), draws.noise.to(xb.device, xb.dtype)
    y = None if labels is None else labels.to(xb.device)[item]
    return edm_loss_from_draws(denoise_fn, x, sigma, noise, sigma_data, draws.weight.to(xb.device), y)


def edm_loss_from_draws(
    denoise_fn,
    x: torch.Tensor,
    sigma: torch.Tensor,
    noise: torch.Tensor,
    sigma_data,
    weight: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
):
    """Mean over batch and coordinates of lambda(sigma) |D(x + sigma n, sigma[, c]) - x|^2 (Eq. 2 / Table 1).

    A mean (not EDM's sum over coordinates) keeps the loss and the gradient-clipping scale independent
    of the data dimension; for data that D matches, the weighted loss per coordinate is O(1).
    ``weight`` (B,): per-term importance weights p(sigma)/q(sigma) (``draw_training_sigma_noise``); a weight
    of exactly 1 leaves every number as without it. ``labels`` (B,): class labels for a conditional
    ``denoise_fn`` (its third argument); None calls ``denoise_fn(x, sigma)`` as ever.
    """
    sig = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    x_noisy = x + noise * sig
    D = denoise_fn(x_noisy, sigma) if labels is None else denoise_fn(x_noisy, sigma, labels)
    w = edm_weight(sig, sigma_data)
    if weight is not None:
        w = w * weight.reshape(sig.shape).to(w.dtype)
    return (w * (D.float() - x.float()) ** 2).mean()


def edm_loss(precond: EDMPrecond, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The EDM training loss of ``precond`` on a batch ``x`` (B, *shape), with draws from ``generator``."""
    sigma, noise = draw_sigma_noise(generator, x.shape[0], tuple(x.shape[1:]), precond.sigma_data)
    sigma, noise = sigma.to(x.device), noise.to(x.device, x.dtype)
    return edm_loss_from_draws(precond, x, sigma, noise, precond.sigma_data)


def sigma_range(sigma_data: float) -> tuple[float, float]:
    """The central 99.7 % of the training sigma distribution (for documentation/tests)."""
    s = float(sigma_data) / SIGMA_DATA_REF
    return s * math.exp(P_MEAN - 3 * P_STD), s * math.exp(P_MEAN + 3 * P_STD)
