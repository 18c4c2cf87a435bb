"""Sparse autoencoders: one small interface over five architectures.

Architectures (``SAEConfig.architecture``):

- ``relu``: ReLU codes with an L1 penalty weighted by decoder-row norms (the seed recipe);
- ``topk``: the k largest pre-activations per token (Gao et al. 2024);
- ``batchtopk``: the k x batch largest over the whole batch in training, a learned global
  threshold at inference (Bussmann et al. 2024);
- ``jumprelu``: per-feature learned thresholds trained with straight-through estimators and an L0
  penalty (Rajamanoharan et al. 2024);
- ``matryoshka``: BatchTopK codes whose nested prefixes must each reconstruct the input.

Normalisation is part of the model: ``encode`` takes raw backbone activations, subtracts the stored
mean and divides by the stored scale; ``decode`` undoes it. Nobody normalises by hand.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from saescope import __version__

ARCHITECTURES = ("relu", "topk", "batchtopk", "jumprelu", "matryoshka")
K_SPARSE = ("topk", "batchtopk", "matryoshka")
FORMAT_VERSION = 1


class ShapeMismatch(ValueError):
    """Activations or weights whose shape does not fit the SAE."""


@dataclass
class SAEConfig:
    """Everything needed to rebuild an SAE and know where its inputs came from."""

    d_in: int
    d_sae: int
    architecture: str = "topk"
    k: int | None = 32
    l1_coefficient: float = 0.0  # relu: L1 weight; jumprelu: L0 weight
    jumprelu_bandwidth: float = 0.05
    jumprelu_init_threshold: float = 0.05
    matryoshka_prefixes: list[int] | None = None
    batchtopk_candidates: int = 4  # each token keeps at most this many x k latents in BatchTopK
    # provenance
    model_id: str | None = None
    model_revision: str | None = None
    layer: int | None = None  # resolved block index (output of block `layer`)
    layer_requested: int | None = None
    token_kinds: list[str] = field(default_factory=lambda: ["patch"])
    normalization: str = "standardize"  # "standardize" (mean + scalar scale) or "none"
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    library_version: str = __version__
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"unknown SAE architecture {self.architecture!r}: expected one of {ARCHITECTURES}"
            )
        if self.d_in <= 0 or self.d_sae <= 0:
            raise ValueError(f"d_in and d_sae must be positive, got {self.d_in}, {self.d_sae}")
        if self.architecture in K_SPARSE:
            if self.k is None or not 0 < self.k <= self.d_sae:
                raise ValueError(f"{self.architecture} needs 0 < k <= d_sae, got k={self.k}")
        if self.architecture == "matryoshka":
            if not self.matryoshka_prefixes:
                self.matryoshka_prefixes = default_matryoshka_prefixes(self.d_sae)
            p = list(self.matryoshka_prefixes)
            if p != sorted(set(p)) or p[-1] != self.d_sae or p[0] <= 0:
                raise ValueError(
                    f"matryoshka_prefixes must increase strictly and end at d_sae={self.d_sae}, "
                    f"got {p}"
                )
        if self.normalization not in ("standardize", "none"):
            raise ValueError(f"normalization must be 'standardize' or 'none', got {self.normalization!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SAEConfig":
        known = {f.name for f in fields(cls)}
        fmt = int(d.get("format_version", FORMAT_VERSION))
        if fmt > FORMAT_VERSION:
            raise ValueError(
                f"SAE config has format_version {fmt}, newer than this saescope "
                f"({FORMAT_VERSION}); upgrade saescope"
            )
        return cls(**{k: v for k, v in d.items() if k in known})

    @property
    def name(self) -> str:
        """A short, file-name-safe description, e.g. ``topk-k32-x16``."""
        ratio = self.d_sae / self.d_in
        width = f"x{ratio:g}" if ratio == int(ratio) else f"w{self.d_sae}"
        if self.architecture in K_SPARSE:
            return f"{self.architecture}-k{self.k}-{width}"
        return f"{self.architecture}-l{self.l1_coefficient:g}-{width}"


def default_matryoshka_prefixes(d_sae: int) -> list[int]:
    """Nested widths d/16, d/8, d/4, d/2, d (those >= 1, de-duplicated)."""
    return sorted({max(1, d_sae // 2**i) for i in range(4, -1, -1)})


class _StepSTE(torch.autograd.Function):
    """Heaviside step with a rectangle-kernel pseudo-gradient w.r.t. the threshold."""

    @staticmethod
    def forward(ctx, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        pre, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        near = ((pre - threshold).abs() < bw / 2).to(pre.dtype)
        g_thr = (-(1.0 / bw) * near * grad_out).sum(dim=tuple(range(pre.dim() - 1)))
        return None, g_thr, None


class _JumpReLUSTE(torch.autograd.Function):
    """``pre * H(pre - threshold)`` with a pseudo-gradient for the threshold."""

    @staticmethod
    def forward(ctx, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        pre, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        active = (pre > threshold).to(pre.dtype)
        near = ((pre - threshold).abs() < bw / 2).to(pre.dtype)
        g_pre = grad_out * active
        g_thr = (-(threshold / bw) * near * grad_out).sum(dim=tuple(range(pre.dim() - 1)))
        return g_pre, g_thr, None


class _SparseDecode(torch.autograd.Function):
    """``sum_j values[n, j] * W[indices[n, j]]`` for k-sparse codes.

    Forward is an embedding-bag; the weight gradient ``Z^T @ grad`` uses a CSR sparse matmul,
    about 2x faster on CPU than embedding-bag's sort-based dense weight backward.
    """

    @staticmethod
    def forward(ctx, indices: torch.Tensor, values: torch.Tensor, weight: torch.Tensor):
        ctx.save_for_backward(indices, values, weight)
        return F.embedding_bag(indices, weight, per_sample_weights=values, mode="sum")

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        indices, values, weight = ctx.saved_tensors
        grad_values = grad_weight = None
        if ctx.needs_input_grad[1]:
            # embedding-bag's fused per-sample-weight backward: <W[idx], grad> without
            # materialising the [n, k, d] gather (10x faster than gather + einsum)
            with torch.enable_grad():
                v = values.detach().requires_grad_()
                y = F.embedding_bag(indices, weight.detach(), per_sample_weights=v, mode="sum")
                (grad_values,) = torch.autograd.grad(y, v, grad_out)
        if ctx.needs_input_grad[2]:
            n, k = indices.shape
            with warnings.catch_warnings():  # CSR support is "beta": only construction + t() @ dense
                warnings.simplefilter("ignore", UserWarning)
                z = torch.sparse_csr_tensor(
                    torch.arange(0, n * k + 1, k, device=indices.device), indices.reshape(-1),
                    values.reshape(-1).to(grad_out.dtype), (n, weight.shape[0]),
                    check_invariants=False,
                )
            grad_weight = z.t() @ grad_out
        return None, grad_values, grad_weight


def sparse_decode(indices: torch.Tensor, values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if values.requires_grad or weight.requires_grad:
        return _SparseDecode.apply(indices, values, weight)
    return F.embedding_bag(indices, weight, per_sample_weights=values, mode="sum")


@dataclass
class Codes:
    """Sparse codes of a batch: either k-sparse (indices + values) or dense."""

    dense: torch.Tensor | None = None  # [N, d_sae]
    indices: torch.Tensor | None = None  # [N, k] (k-sparse form)
    values: torch.Tensor | None = None  # [N, k]

    def to_dense(self, d_sae: int) -> torch.Tensor:
        if self.dense is not None:
            return self.dense
        assert self.indices is not None and self.values is not None
        out = self.values.new_zeros(*self.values.shape[:-1], d_sae)
        return out.scatter_(-1, self.indices, self.values)


@dataclass
class TrainOutput:
    """Loss terms of one training forward, in normalised units."""

    loss: torch.Tensor
    mse: torch.Tensor  # mean squared error per element (normalised space)
    sparsity: torch.Tensor  # the sparsity term before its coefficient (L1 or L0), 0 for k-sparse
    aux: torch.Tensor  # AuxK loss before its coefficient
    l0: torch.Tensor  # mean active latents per token
    fired: torch.Tensor  # [d_sae] bool: latent fired at least once in this batch
    fvu: torch.Tensor  # fraction of variance unexplained on this batch


class SAE(nn.Module):
    """A sparse autoencoder over ``d_in``-dimensional backbone activations."""

    def __init__(self, cfg: SAEConfig, seed: int | None = 0):
        super().__init__()
        self.cfg = cfg
        d, w = cfg.d_in, cfg.d_sae
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        w_dec = torch.randn(w, d, generator=gen)
        w_dec /= w_dec.norm(dim=-1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        # Tied init. With ReLU-like activations about half of all latents fire on a random
        # input, and sum_i relu(w_i.x) w_i ~ (d_sae / 2d) x for random unit rows, so the encoder is
        # scaled by 2d/d_sae to start near the identity instead of a d_sae/2d-fold blow-up.
        # k-sparse codes keep only k latents and start from the plain transpose.
        scale = 1.0 if cfg.architecture in K_SPARSE else min(1.0, 2.0 * d / w)
        self.W_enc = nn.Parameter(w_dec.t().clone() * scale)
        self.b_enc = nn.Parameter(torch.zeros(w))
        self.b_dec = nn.Parameter(torch.zeros(d))
        if cfg.architecture == "jumprelu":
            self.log_threshold = nn.Parameter(
                torch.full((w,), math.log(cfg.jumprelu_init_threshold))
            )
        self.register_buffer("norm_mean", torch.zeros(d))
        self.register_buffer("norm_scale", torch.ones(()))
        # BatchTopK / Matryoshka: global inference threshold, an EMA of the smallest kept value
        self.register_buffer("threshold", torch.zeros(()))

    # ---------------------------------------------------------------- normalisation
    def set_normalization(self, sample: torch.Tensor) -> None:
        """Estimate mean and scale from raw activations ``sample`` [N, d_in].

        After normalisation the average squared norm per token is ``d_in`` (unit variance per
        dimension on average), so the MSE in normalised units is directly the FVU.
        """
        self._check_input(sample)
        sample = sample.float()
        if self.cfg.normalization == "none":
            self.norm_mean.zero_()
            self.norm_scale.fill_(1.0)
            return
        mean = sample.mean(0)
        var = (sample - mean).pow(2).sum(-1).mean() / self.cfg.d_in
        self.norm_mean.copy_(mean)
        self.norm_scale.fill_(float(var.clamp_min(1e-12).sqrt()))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.norm_mean) / self.norm_scale

    def denormalize(self, xn: torch.Tensor) -> torch.Tensor:
        return xn * self.norm_scale + self.norm_mean

    @torch.no_grad()
    def init_decoder_bias(self, sample: torch.Tensor, iters: int = 50) -> None:
        """Set ``b_dec`` to the geometric median of (normalised) data, as in Bricken et al."""
        xn = self.normalize(sample.float())
        median = xn.mean(0)
        for _ in range(iters):  # Weiszfeld iterations
            w = 1.0 / (xn - median).norm(dim=-1).clamp_min(1e-6)
            new = (w[:, None] * xn).sum(0) / w.sum()
            if (new - median).norm() < 1e-6 * (1 + median.norm()):
                median = new
                break
            median = new
        self.b_dec.copy_(median)

    # ---------------------------------------------------------------- core maps
    def _check_input(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.cfg.d_in:
            raise ShapeMismatch(
                f"SAE expects activations of width {self.cfg.d_in}, got shape {tuple(x.shape)}"
                + (f" (this SAE was trained on {self.cfg.model_id} layer {self.cfg.layer})"
                   if self.cfg.model_id else "")
            )

    def pre_acts(self, xn: torch.Tensor) -> torch.Tensor:
        """``(xn - b_dec) @ W_enc + b_enc``, written so that training never differentiates
        through the input: the b_dec gradient is then a vector-matrix product instead of a full
        [batch, d_sae] x [d_sae, d_in] matmul (a third of the step's matmul time)."""
        return xn @ self.W_enc + (self.b_enc - self.b_dec @ self.W_enc)

    def _activate(self, pre: torch.Tensor, training: bool, k: int | None = None) -> Codes:
        arch = self.cfg.architecture
        if arch == "relu":
            return Codes(dense=F.relu(pre))
        if arch == "jumprelu":
            thr = self.log_threshold.exp()
            if training:
                return Codes(dense=_JumpReLUSTE.apply(pre, thr, self.cfg.jumprelu_bandwidth))
            return Codes(dense=pre * (pre > thr))
        k = k or self.cfg.k
        if arch == "topk" or (not training and self.threshold.item() <= 0):
            # TopK; also BatchTopK before any threshold was learned
            vals, idx = pre.topk(k, dim=-1, sorted=False)
            return Codes(indices=idx, values=F.relu(vals))
        if training:
            return self._batch_topk(pre, k)
        return Codes(dense=pre * (pre > self.threshold))

    def _batch_topk(self, pre: torch.Tensor, k: int) -> Codes:
        """Keep the k x N largest activations of the batch; update the inference threshold.

        Candidates are each token's top ``batchtopk_candidates * k`` latents (so one token uses at
        most that many): the exact global top-(k N) over the full [N, d_sae] matrix costs ~3x more
        on CPU and almost never differs.
        """
        n = pre.shape[0]
        m = min(self.cfg.d_sae, self.cfg.batchtopk_candidates * k)
        vals, idx = F.relu(pre).topk(m, dim=-1, sorted=False)
        flat = vals.flatten()
        keep = min(k * n, flat.numel())
        top_vals, top_pos = flat.topk(keep, sorted=False)
        mask = torch.zeros_like(flat, dtype=torch.bool)
        mask[top_pos] = True
        mask &= flat > 0
        with torch.no_grad():
            kept = top_vals[top_vals > 0]
            if kept.numel():
                smallest = kept.min()
                if self.threshold.item() <= 0:
                    self.threshold.fill_(float(smallest))
                else:
                    self.threshold.mul_(0.99).add_(0.01 * smallest)
        return Codes(indices=idx, values=vals * mask.view_as(vals))

    def encode_codes(self, x: torch.Tensor) -> Codes:
        self._check_input(x)
        return self._activate(self.pre_acts(self.normalize(x)), training=False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Raw activations ``[..., d_in]`` -> dense codes ``[..., d_sae]`` (inference mode)."""
        shape = x.shape
        codes = self.encode_codes(x.reshape(-1, shape[-1]))
        return codes.to_dense(self.cfg.d_sae).reshape(*shape[:-1], self.cfg.d_sae)

    def _decode_normalized(self, codes: Codes, upto: int | None = None) -> torch.Tensor:
        if codes.indices is not None:
            values = codes.values
            if upto is not None:
                values = values * (codes.indices < upto)
            return sparse_decode(codes.indices, values, self.W_dec) + self.b_dec
        dense = codes.dense
        if upto is not None:
            return dense[..., :upto] @ self.W_dec[:upto] + self.b_dec
        return dense @ self.W_dec + self.b_dec

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Dense codes ``[..., d_sae]`` -> reconstruction in raw activation units."""
        if z.shape[-1] != self.cfg.d_sae:
            raise ShapeMismatch(f"SAE has {self.cfg.d_sae} latents, codes have shape {tuple(z.shape)}")
        return self.denormalize(z @ self.W_dec + self.b_dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of raw activations ``x``."""
        shape = x.shape
        codes = self.encode_codes(x.reshape(-1, shape[-1]))
        return self.denormalize(self._decode_normalized(codes)).reshape(shape)

    # ---------------------------------------------------------------- training
    def train_forward(
        self,
        x: torch.Tensor,
        sparsity_coefficient: float | None = None,
        k: int | None = None,
        dead_mask: torch.Tensor | None = None,
        aux_k: int | None = None,
        aux_coefficient: float = 1 / 32,
    ) -> TrainOutput:
        """Loss on a batch of raw activations [N, d_in].

        ``sparsity_coefficient`` overrides the configured L1/L0 weight (sparsity warm-up);
        ``k`` overrides the configured k (k annealing); ``dead_mask`` [d_sae] marks latents that
        have not fired recently, which the AuxK loss trains to model the residual.
        """
        self._check_input(x)
        xn = self.normalize(x)
        pre = self.pre_acts(xn)
        codes = self._activate(pre, training=True, k=k)
        arch = self.cfg.architecture
        if arch == "matryoshka":
            prefixes = self.cfg.matryoshka_prefixes or [self.cfg.d_sae]
            mses = [(self._decode_normalized(codes, upto=p) - xn).pow(2).mean() for p in prefixes]
            mse = mses[-1]
            recon_loss = torch.stack(mses).mean()
            recon = None
        else:
            recon = self._decode_normalized(codes)
            mse = (recon - xn).pow(2).mean()
            recon_loss = mse
        coef = self.cfg.l1_coefficient if sparsity_coefficient is None else sparsity_coefficient
        zero = pre.new_zeros(())
        if arch == "relu":
            sparsity = (codes.dense * self.W_dec.norm(dim=-1)).sum(-1).mean()
        elif arch == "jumprelu":
            sparsity = _StepSTE.apply(pre, self.log_threshold.exp(), self.cfg.jumprelu_bandwidth).sum(-1).mean()
        else:
            sparsity = zero
        aux = zero
        if dead_mask is not None and arch in K_SPARSE and bool(dead_mask.any()):
            if recon is None:
                recon = self._decode_normalized(codes)
            residual = (xn - recon).detach()
            n_dead = int(dead_mask.sum())
            ka = min(aux_k or max(1, self.cfg.d_in // 2), n_dead)
            dead_pre = pre.masked_fill(~dead_mask, float("-inf"))
            vals, idx = dead_pre.topk(ka, dim=-1, sorted=False)
            aux_recon = sparse_decode(idx, F.relu(vals), self.W_dec)
            aux = (aux_recon - residual).pow(2).sum(-1).mean() / residual.pow(2).sum(-1).mean().clamp_min(1e-12)
        loss = recon_loss + coef * sparsity + (aux_coefficient * aux if aux.requires_grad else 0.0)
        with torch.no_grad():
            if codes.dense is not None:
                active = codes.dense > 0
                l0 = active.sum(-1).float().mean()
                fired = active.any(0)
            else:
                active = codes.values > 0
                l0 = active.sum(-1).float().mean()
                fired = torch.zeros(self.cfg.d_sae, dtype=torch.bool, device=x.device)
                fired[codes.indices[active]] = True
            fvu = mse / xn.var(0, unbiased=False).mean().clamp_min(1e-12)
        return TrainOutput(loss=loss, mse=mse.detach(), sparsity=sparsity.detach(),
                           aux=aux.detach(), l0=l0, fired=fired, fvu=fvu.detach())

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Project decoder rows back onto the unit sphere (after each optimiser step)."""
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_parallel_grads(self) -> None:
        """Drop the gradient component along each decoder row, so steps move along the sphere."""
        if self.W_dec.grad is None:
            return
        w = self.W_dec
        parallel = (self.W_dec.grad * w).sum(-1, keepdim=True)
        self.W_dec.grad.sub_(parallel * w)

    # ---------------------------------------------------------------- helpers
    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    def check_feature(self, feature: int) -> int:
        """Validate a feature id (clear error for unknown ids)."""
        if isinstance(feature, bool) or not isinstance(feature, int):
            try:
                feature = int(feature)
            except (TypeError, ValueError) as err:
                raise ValueError(f"feature id must be an integer, got {feature!r}") from err
        if not 0 <= feature < self.cfg.d_sae:
            raise ValueError(f"unknown feature {feature}: this SAE has features 0..{self.cfg.d_sae - 1}")
        return feature

    def extra_repr(self) -> str:
        return f"{self.cfg.name}, d_in={self.cfg.d_in}, d_sae={self.cfg.d_sae}"
