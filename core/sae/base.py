"""The shared SAE machinery that every architecture builds on.

Why a base class: encoding, decoding, normalisation, the unit-norm decoder, the AuxK loss and the
training statistics are the same for every SAE; an architecture only decides how pre-activations
become codes (``_activate``), what its sparsity penalty is (``_sparsity_term``) and, rarely, how
the reconstruction loss is formed (``_reconstruction``). ``SAE(cfg)`` builds the registered
subclass for ``cfg.architecture``, so callers never name a subclass.

Normalisation is part of the model: ``encode`` takes raw backbone activations, subtracts the stored
mean and divides by the stored scale; ``decode`` undoes it. Nobody normalises by hand.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from saescope import __version__
from saescope.core import formats
from saescope.core.sae.registry import get_architecture

FORMAT_VERSION = formats.SAE.version


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
        """Refuse impossible configs early; the architecture checks (and fills) its own fields."""
        arch = get_architecture(self.architecture)
        if self.d_in <= 0 or self.d_sae <= 0:
            raise ValueError(f"d_in and d_sae must be positive, got {self.d_in}, {self.d_sae}")
        arch.validate_config(self)
        if self.normalization not in ("standardize", "none"):
            raise ValueError(
                f"normalization must be 'standardize' or 'none', got {self.normalization!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SAEConfig:
        """Rebuild from ``config.json``; refuses a config written by a newer saescope."""
        known = {f.name for f in fields(cls)}
        formats.SAE.check(d, "SAE config", check_name=False, default_version=FORMAT_VERSION)
        return cls(**{k: v for k, v in d.items() if k in known})

    @property
    def name(self) -> str:
        """A short, file-name-safe description, e.g. ``topk-k32-x16``."""
        ratio = self.d_sae / self.d_in
        width = f"x{ratio:g}" if ratio == int(ratio) else f"w{self.d_sae}"
        if get_architecture(self.architecture).k_sparse:
            return f"{self.architecture}-k{self.k}-{width}"
        return f"{self.architecture}-l{self.l1_coefficient:g}-{width}"


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
            # CSR support is "beta": only construction + t() @ dense
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                z = torch.sparse_csr_tensor(
                    torch.arange(0, n * k + 1, k, device=indices.device),
                    indices.reshape(-1),
                    values.reshape(-1).to(grad_out.dtype),
                    (n, weight.shape[0]),
                    check_invariants=False,
                )
            grad_weight = z.t() @ grad_out
        return None, grad_values, grad_weight


def sparse_decode(
    indices: torch.Tensor, values: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """k-sparse codes times a weight matrix without building the dense [N, d_sae] codes."""
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
    """A sparse autoencoder over ``d_in``-dimensional backbone activations.

    ``SAE(cfg, seed=...)`` returns an instance of the class registered for
    ``cfg.architecture``. Subclasses set the class attributes below and override ``_activate``
    (and, where they have one, ``_sparsity_term`` / ``_reconstruction``).
    """

    architecture: ClassVar[str] = ""  # the config name (``SAEConfig.architecture``)
    description: ClassVar[str] = ""  # one line for help texts and docs
    k_sparse: ClassVar[bool] = False  # sparsity is a count k: AuxK loss, no penalty coefficient
    penalty_option: ClassVar[str | None] = None  # sweep CLI flag of its coefficient ("l1", "l0")
    default_hyperparameters: ClassVar[dict[str, Any]] = {}  # the CLI's defaults for its knob
    saev_activation: ClassVar[str | None] = None  # saev activation class it imports from
    # SAELens (architecture, activation) pairs it imports from; None matches anything. Pairs
    # with an architecture name win over activation-only pairs.
    saelens_names: ClassVar[tuple[tuple[str | None, str | None], ...]] = ()

    def __new__(cls, cfg: SAEConfig | None = None, *args: Any, **kwargs: Any) -> SAE:
        if cls is SAE and cfg is not None:
            cls = get_architecture(cfg.architecture)
        return super().__new__(cls)

    def __init__(self, cfg: SAEConfig, seed: int | None = 0):
        super().__init__()
        if type(self).architecture != cfg.architecture:
            raise ValueError(
                f"{type(self).__name__} is the {type(self).architecture!r} SAE, "
                f"the config asks for {cfg.architecture!r}"
            )
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
        scale = 1.0 if self.k_sparse else min(1.0, 2.0 * d / w)
        self.W_enc = nn.Parameter(w_dec.t().clone() * scale)
        self.b_enc = nn.Parameter(torch.zeros(w))
        self.b_dec = nn.Parameter(torch.zeros(d))
        self._init_extra_parameters()
        self.register_buffer("norm_mean", torch.zeros(d))
        self.register_buffer("norm_scale", torch.ones(()))
        # BatchTopK / Matryoshka: global inference threshold, an EMA of the smallest kept value
        self.register_buffer("threshold", torch.zeros(()))

    # ---------------------------------------------------------------- architecture hooks
    @classmethod
    def validate_config(cls, cfg: SAEConfig) -> None:
        """Check (and fill defaults of) the config fields this architecture uses."""
        if cls.k_sparse and (cfg.k is None or not 0 < cfg.k <= cfg.d_sae):
            raise ValueError(f"{cfg.architecture} needs 0 < k <= d_sae, got k={cfg.k}")

    @classmethod
    def saelens_extra_tensors(cls, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Our tensors beyond the shared ones, from an SAELens state dict (ValueError if absent)."""
        return {}

    def _init_extra_parameters(self) -> None:
        """Create architecture-specific parameters (registered after ``b_dec``)."""

    def _activate(self, pre: torch.Tensor, training: bool, k: int | None = None) -> Codes:
        """Pre-activations [N, d_sae] -> codes; ``training`` may update running statistics."""
        raise NotImplementedError(f"{type(self).__name__} must define _activate")

    def _sparsity_term(self, pre: torch.Tensor, codes: Codes) -> torch.Tensor:
        """The sparsity penalty before its coefficient; zero for k-sparse codes."""
        return pre.new_zeros(())

    def _reconstruction(
        self, codes: Codes, xn: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(MSE, reconstruction loss, normalised reconstruction or None if not built)."""
        recon = self._decode_normalized(codes)
        mse = (recon - xn).pow(2).mean()
        return mse, mse, recon

    def _get_name(self) -> str:
        return "SAE"  # repr stays "SAE(...)" whatever the architecture subclass

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
                + (
                    f" (this SAE was trained on {self.cfg.model_id} layer {self.cfg.layer})"
                    if self.cfg.model_id
                    else ""
                )
            )

    def pre_acts(self, xn: torch.Tensor) -> torch.Tensor:
        """``(xn - b_dec) @ W_enc + b_enc``, written so that training never differentiates
        through the input: the b_dec gradient is then a vector-matrix product instead of a full
        [batch, d_sae] x [d_sae, d_in] matmul (a third of the step's matmul time)."""
        return xn @ self.W_enc + (self.b_enc - self.b_dec @ self.W_enc)

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
            raise ShapeMismatch(
                f"SAE has {self.cfg.d_sae} latents, codes have shape {tuple(z.shape)}"
            )
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
        mse, recon_loss, recon = self._reconstruction(codes, xn)
        coef = self.cfg.l1_coefficient if sparsity_coefficient is None else sparsity_coefficient
        sparsity = self._sparsity_term(pre, codes)
        aux = self._aux_loss(xn, pre, codes, recon, dead_mask, aux_k)
        loss = recon_loss + coef * sparsity + (aux_coefficient * aux if aux.requires_grad else 0.0)
        with torch.no_grad():
            l0, fired = self._activity(codes, x.device)
            fvu = mse / xn.var(0, unbiased=False).mean().clamp_min(1e-12)
        return TrainOutput(
            loss=loss,
            mse=mse.detach(),
            sparsity=sparsity.detach(),
            aux=aux.detach(),
            l0=l0,
            fired=fired,
            fvu=fvu.detach(),
        )

    def _aux_loss(
        self,
        xn: torch.Tensor,
        pre: torch.Tensor,
        codes: Codes,
        recon: torch.Tensor | None,
        dead_mask: torch.Tensor | None,
        aux_k: int | None,
    ) -> torch.Tensor:
        """AuxK (Gao et al.): the top dead latents model the residual, so they learn again."""
        if dead_mask is None or not self.k_sparse or not bool(dead_mask.any()):
            return pre.new_zeros(())
        if recon is None:
            recon = self._decode_normalized(codes)
        residual = (xn - recon).detach()
        n_dead = int(dead_mask.sum())
        ka = min(aux_k or max(1, self.cfg.d_in // 2), n_dead)
        dead_pre = pre.masked_fill(~dead_mask, float("-inf"))
        vals, idx = dead_pre.topk(ka, dim=-1, sorted=False)
        aux_recon = sparse_decode(idx, F.relu(vals), self.W_dec)
        return (aux_recon - residual).pow(2).sum(-1).mean() / residual.pow(2).sum(
            -1
        ).mean().clamp_min(1e-12)

    def _activity(self, codes: Codes, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean active latents per token, and which latents fired in the batch."""
        if codes.dense is not None:
            active = codes.dense > 0
            return active.sum(-1).float().mean(), active.any(0)
        active = codes.values > 0
        l0 = active.sum(-1).float().mean()
        fired = torch.zeros(self.cfg.d_sae, dtype=torch.bool, device=device)
        fired[codes.indices[active]] = True
        return l0, fired

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
            raise ValueError(
                f"unknown feature {feature}: this SAE has features 0..{self.cfg.d_sae - 1}"
            )
        return feature

    def extra_repr(self) -> str:
        return f"{self.cfg.name}, d_in={self.cfg.d_in}, d_sae={self.cfg.d_sae}"


__all__ = [
    "FORMAT_VERSION",
    "SAEConfig",
    "SAE",
    "Codes",
    "TrainOutput",
    "ShapeMismatch",
    "sparse_decode",
]
