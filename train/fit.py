"""Train one or several SAEs (a sweep) in a single streaming pass over an activation store.

Why one pass for a sweep: reading and shuffling activations costs as much as a small SAE step, so
a sweep over k or the L1 coefficient shares every batch. The loop is resumable: every
``checkpoint_every`` seconds the SAEs, the Adam states, the dead-latent counters and the step are
written atomically (safetensors + JSON); the data order is a pure function of the seed, so a
resumed run skips the batches it already consumed and continues exactly.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from saescope.core.fileio import atomic_path, atomic_write_text
from saescope.core.sae import (
    SAE,
    SAEConfig,
    architecture_names,
    get_architecture,
    is_k_sparse,
)
from saescope.core.sae_io import save_sae
from saescope.train.cli import (
    DeviceOption,
    OutOption,
    ProgressOption,
    SeedOption,
    add_step,
    announce_config,
    option,
)
from saescope.train.schedules import k_at, lr_at, sparsity_at

CHECKPOINT_DIR = "checkpoint"


@dataclass
class SAESpec:
    """One member of a sweep."""

    architecture: str = "topk"
    expansion: float = 16.0
    k: int | None = 32
    l1_coefficient: float = 0.0

    def config(self, d_in: int, **provenance: Any) -> SAEConfig:
        return SAEConfig(
            d_in=d_in,
            d_sae=int(round(d_in * self.expansion)),
            architecture=self.architecture,
            k=self.k if is_k_sparse(self.architecture) else None,
            l1_coefficient=self.l1_coefficient,
            **provenance,
        )


@dataclass(kw_only=True)
class SweepOptions:
    """Which SAEs to train and at what batch size and learning rate: shared by ``fit`` and ``run``.

    The sweep is the product of ``arch`` x ``expansion`` x (``k`` for k-sparse architectures,
    ``l1`` for relu, ``l0`` for jumprelu); :meth:`sweep` lists its members.
    """

    arch: list[str] = option(default_factory=lambda: ["topk"], choices=architecture_names)
    """SAE architectures to train"""
    expansion: list[float] = field(default_factory=lambda: [16.0])
    """expansion factors d_sae / d_model"""
    k: list[int] = field(default_factory=lambda: [32])
    """active latents per token (k-sparse architectures)"""
    l1: list[float] = field(default_factory=lambda: [3e-3])
    """L1 coefficients (relu)"""
    l0: list[float] = field(default_factory=lambda: [1e-3])
    """L0 coefficients (jumprelu)"""
    batch_size: int = 4096
    """tokens per training step"""
    lr: float = 4e-4
    """peak Adam learning rate"""

    def sweep(self) -> list[SAESpec]:
        """The cartesian product of arch x expansion x (k or l1 or l0)."""
        specs = []
        for arch, exp in itertools.product(self.arch, self.expansion):
            cls = get_architecture(arch)  # the registry says how an architecture is swept
            if cls.k_sparse:
                specs += [SAESpec(arch, exp, k=k) for k in self.k]
            else:  # the coefficients of its penalty option (relu: --l1, jumprelu: --l0)
                coefficients = getattr(self, cls.penalty_option or "l1")
                specs += [SAESpec(arch, exp, k=None, l1_coefficient=c) for c in coefficients]
        return specs


@dataclass(kw_only=True)
class FitConfig(ProgressOption, DeviceOption, SeedOption, SweepOptions, OutOption):
    """``saescope fit``: the sweep, the schedule and the bookkeeping of one training run.

    Python callers pass ``saes`` (a list of :class:`SAESpec`); the command line gives the sweep
    options instead, and ``saes`` defaults to their :meth:`SweepOptions.sweep`.
    """

    store: str
    """activation store folder (from 'extract')"""
    saes: list[SAESpec] | None = option(None, cli=False)
    """the sweep members (default: the product of the sweep options)"""
    tokens: int | None = None
    """training tokens (default: one pass over the store)"""
    lr_warmup_steps: int = 100
    """steps of linear learning-rate warm-up"""
    lr_decay_fraction: float = 0.2
    """final fraction of the run over which the learning rate decays to zero"""
    sparsity_warmup_fraction: float = 0.05
    """fraction of the run over which k / the sparsity coefficient warm up"""
    aux_coefficient: float = 1 / 32
    """weight of the AuxK loss that revives dead latents"""
    dead_window_tokens: int | None = None
    """a latent is dead after this many tokens without firing (default: min(1M, a fifth of the
    run))"""
    shuffle_buffer: int = 2**18
    """tokens in the shuffle buffer"""
    norm_sample_tokens: int = option(100_000, cli=False)
    """tokens sampled to estimate the input normalisation"""
    checkpoint_every: float = 120.0
    """seconds between checkpoints"""
    log_every: int = option(10, cli=False)
    """steps between records in log.jsonl"""
    resume: bool = True
    """resume from OUT/checkpoint when it exists"""
    plots: bool = True
    """write feature-frequency and FVU-vs-L0 plots"""

    def __post_init__(self) -> None:
        if self.saes is None:
            self.saes = self.sweep()


@dataclass
class _Member:
    """An SAE under training with its optimiser and firing counters."""

    sae: SAE
    opt: torch.optim.Adam
    since_fired: torch.Tensor  # tokens since each latent last fired
    last: dict = field(default_factory=dict)


def _open_store(path: str):
    from saescope.core.store import ActivationStore

    return ActivationStore(path)


def _provenance(store) -> dict:
    """What the SAE config records about where its training activations came from."""
    return {
        "model_id": store.model_id,
        "model_revision": store.revision,
        "layer": store.layer,
        "layer_requested": store.layer_requested,
        "token_kinds": [k.value for k in store.kinds],
    }


def _make_members(cfg: FitConfig, store, total_steps: int) -> list[_Member]:
    members = []
    for i, spec in enumerate(cfg.saes):
        sae_cfg = spec.config(store.d_model, **_provenance(store))
        sae_cfg.hyperparameters = {
            "lr": cfg.lr,
            "batch_size": cfg.batch_size,
            "steps": total_steps,
            "tokens": total_steps * cfg.batch_size,
            "lr_warmup_steps": cfg.lr_warmup_steps,
            "lr_decay_fraction": cfg.lr_decay_fraction,
            "sparsity_warmup_fraction": cfg.sparsity_warmup_fraction,
            "aux_coefficient": cfg.aux_coefficient,
            "dead_window_tokens": _dead_window(cfg, total_steps),
            "seed": cfg.seed,
            "optimizer": "adam",
            "unit_norm_decoder": True,
        }
        sae = SAE(sae_cfg, seed=cfg.seed + i).to(cfg.device)
        opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
        w = sae_cfg.d_sae
        members.append(_Member(sae, opt, torch.zeros(w, dtype=torch.long)))
    return members


def _names(members: list[_Member]) -> list[str]:
    """Unique folder names for the sweep members."""
    seen: dict[str, int] = {}
    out = []
    for m in members:
        base = m.sae.cfg.name
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.append(base if n == 0 else f"{base}-{n}")
    return out


# ------------------------------------------------------------------------------ checkpoints
def _save_checkpoint(out: Path, members: list[_Member], step: int, tokens: int) -> None:
    ck = out / CHECKPOINT_DIR
    ck.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for i, m in enumerate(members):
        for name, t in m.sae.state_dict().items():
            tensors[f"{i}/sae/{name}"] = t.detach().cpu().contiguous()
        names = dict((id(p), n) for n, p in m.sae.named_parameters())
        for p, st in m.opt.state.items():
            for key, val in st.items():
                tensors[f"{i}/opt/{names[id(p)]}/{key}"] = (
                    torch.as_tensor(val).detach().cpu().contiguous()
                )
        tensors[f"{i}/since_fired"] = m.since_fired
    meta = {
        "step": step,
        "tokens": tokens,
        "configs": [m.sae.cfg.to_dict() for m in members],
        "time": time.time(),
    }
    # One file, one atomic rename: the JSON metadata rides in the safetensors header.
    with atomic_path(ck / "state.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"saescope_fit_state": json.dumps(meta)})
    # human-readable copy, also replaced atomically
    atomic_write_text(ck / "state.json", json.dumps(meta, indent=2), fsync=False)


def _load_checkpoint(out: Path, members: list[_Member]) -> tuple[int, int] | None:
    ck = out / CHECKPOINT_DIR
    path = ck / "state.safetensors"
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["saescope_fit_state"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if len(meta["configs"]) != len(members) or any(
        c["architecture"] != m.sae.cfg.architecture
        or c["d_sae"] != m.sae.cfg.d_sae
        or c.get("k") != m.sae.cfg.k
        or c.get("l1_coefficient") != m.sae.cfg.l1_coefficient
        for c, m in zip(meta["configs"], members)
    ):
        raise ValueError(
            f"the checkpoint in {ck} was made by a different sweep; "
            "use another --out or --no-resume"
        )
    for i, m in enumerate(members):
        m.sae.load_state_dict({n: tensors[f"{i}/sae/{n}"] for n in m.sae.state_dict()})
        for n, p in m.sae.named_parameters():
            prefix = f"{i}/opt/{n}/"
            st = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            if st:
                m.opt.state[p] = {k: (v.to(p.device) if k != "step" else v) for k, v in st.items()}
        m.since_fired.copy_(tensors[f"{i}/since_fired"])
    return int(meta["step"]), int(meta["tokens"])


# ------------------------------------------------------------------------------ the loop
def _step(m: _Member, x: torch.Tensor, step: int, total: int, cfg: FitConfig) -> None:
    sae = m.sae
    sparsity_warmup = int(total * cfg.sparsity_warmup_fraction)
    lr = lr_at(
        step, total, cfg.lr, min(cfg.lr_warmup_steps, max(1, total // 10)), cfg.lr_decay_fraction
    )
    for g in m.opt.param_groups:
        g["lr"] = lr
    coef = sparsity_at(step, sparsity_warmup, sae.cfg.l1_coefficient)
    k = k_at(step, sparsity_warmup, sae.cfg.k, sae.cfg.d_sae) if sae.cfg.k else None
    dead = m.since_fired >= _dead_window(cfg, total)
    out = sae.train_forward(
        x,
        sparsity_coefficient=coef,
        k=k,
        dead_mask=dead.to(x.device),
        aux_coefficient=cfg.aux_coefficient,
    )
    if not math.isfinite(out.loss.item()):
        raise FloatingPointError(
            f"{sae.cfg.name}: loss became {out.loss.item()} at step {step}; lower --lr"
        )
    m.opt.zero_grad(set_to_none=True)
    out.loss.backward()
    sae.remove_parallel_grads()
    m.opt.step()
    sae.normalize_decoder()
    fired = out.fired.cpu()
    m.since_fired += x.shape[0]
    m.since_fired[fired] = 0
    m.last = {
        "loss": out.loss.item(),
        "mse": out.mse.item(),
        "fvu": out.fvu.item(),
        "l0": out.l0.item(),
        "aux": out.aux.item(),
        "sparsity": out.sparsity.item(),
        "lr": lr,
        "sparsity_coefficient": coef,
        "k": k,
        "dead_fraction": dead.float().mean().item(),
    }


def _dead_window(cfg: FitConfig, total_steps: int) -> int:
    """Tokens without firing after which a latent counts as dead (and AuxK trains it)."""
    if cfg.dead_window_tokens:
        return cfg.dead_window_tokens
    return max(10 * cfg.batch_size, min(1_000_000, total_steps * cfg.batch_size // 5))


def _truncate_log(path: Path, start: int) -> None:
    """Drop log records past the resumed step (written after the last checkpoint, then redone)."""
    if not path.exists():
        return
    keep = [
        ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] < start
    ]
    path.write_text("".join(ln + "\n" for ln in keep))


def _batches(store, cfg: FitConfig, skip: int) -> Iterator[torch.Tensor]:
    # exact resume: the stream is deterministic for a seed, so skip what was already consumed
    return store.iter_batches(
        cfg.batch_size,
        shuffle_buffer=cfg.shuffle_buffer,
        seed=cfg.seed,
        loop=True,
        skip_batches=skip,
    )


def fit(cfg: FitConfig) -> list[Path]:
    """Train every SAE in ``cfg.saes``; returns the folders of the saved SAEs."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    store = _open_store(cfg.store)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    tokens = cfg.tokens or store.n_tokens
    total = max(1, tokens // cfg.batch_size)
    members = _make_members(cfg, store, total)
    names = _names(members)
    resumed = _load_checkpoint(out, members) if cfg.resume else None
    if resumed:
        start, seen = resumed
        print(f"resuming from step {start}/{total} ({seen:,} tokens) in {out / CHECKPOINT_DIR}")
    else:
        start, seen = 0, 0
        sample = store.sample(min(cfg.norm_sample_tokens, store.n_tokens), seed=cfg.seed).float()
        for m in members:
            m.sae.set_normalization(sample.to(cfg.device))
            m.sae.init_decoder_bias(sample[:20_000].to(cfg.device))
        (out / "log.jsonl").unlink(missing_ok=True)
    _truncate_log(out / "log.jsonl", start)
    log = open(out / "log.jsonl", "a")
    batches = _batches(store, cfg, start)
    last_ck = time.monotonic()
    bar = tqdm(
        total=total,
        initial=start,
        unit="step",
        disable=not cfg.progress,
        desc="fit",
        dynamic_ncols=True,
    )
    t0, tok0 = time.perf_counter(), seen
    try:
        for step in range(start, total):
            x = next(batches).to(cfg.device, torch.float32)
            for m in members:
                _step(m, x, step, total, cfg)
            seen += x.shape[0]
            bar.update(1)
            if step % cfg.log_every == 0 or step == total - 1:
                tps = (seen - tok0) / max(1e-9, time.perf_counter() - t0)
                rec = {
                    "step": step,
                    "tokens": seen,
                    "tokens_per_s": tps,
                    "saes": {n: m.last for n, m in zip(names, members)},
                }
                log.write(json.dumps(rec) + "\n")
                log.flush()
                first = members[0].last
                bar.set_postfix(
                    tok_s=f"{tps:,.0f}", fvu=f"{first['fvu']:.3f}", l0=f"{first['l0']:.1f}"
                )
            if time.monotonic() - last_ck > cfg.checkpoint_every:
                _save_checkpoint(out, members, step + 1, seen)
                last_ck = time.monotonic()
    finally:
        bar.close()
        log.close()
    _save_checkpoint(out, members, total, seen)
    return _finish(cfg, store, members, names, out, seen, total)


def _finish(
    cfg: FitConfig,
    store,
    members: list[_Member],
    names: list[str],
    out: Path,
    seen: int,
    total: int,
) -> list[Path]:
    from saescope.train.evaluate import evaluate_sae
    from saescope.train.plots import plot_feature_frequency, plot_fvu_vs_l0

    folders, rows = [], []
    for name, m in zip(names, members):
        m.sae.eval()
        metrics = evaluate_sae(
            m.sae,
            store,
            max_tokens=min(200_000, store.n_tokens),
            batch_size=cfg.batch_size,
            seed=cfg.seed + 1,
            progress=False,
        )
        freq = metrics.pop("feature_frequency")
        m.sae.cfg.metrics = {
            **metrics,
            "train_tokens": seen,
            "train_dead_fraction": float(
                (m.since_fired >= _dead_window(cfg, total)).float().mean()
            ),
        }
        folder = save_sae(m.sae, out / name)
        folders.append(folder)
        rows.append({"name": name, **m.sae.cfg.metrics, "architecture": m.sae.cfg.architecture})
        if cfg.plots:
            plot_feature_frequency(freq, folder / "feature_frequency.png", title=name)
        print(
            f"{name}: FVU {metrics['fvu']:.4f}  L0 {metrics['l0']:.1f}  "
            f"dead {metrics['dead_fraction']:.2%}  dense {metrics['dense_fraction']:.2%}  "
            f"-> {folder}"
        )
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    if cfg.plots:
        plot_fvu_vs_l0(rows, out / "fvu_vs_l0.png")
    return folders


# ------------------------------------------------------------------------------ CLI
def add_parser(sub) -> None:
    add_step(
        sub,
        "fit",
        FitConfig,
        run,
        help="train SAEs (a sweep) on an activation store",
        description="Train one or several SAEs in one streaming pass over an activation "
        "store.\nThe sweep is the product of --arch, --expansion and --k (k-sparse) / --l1 "
        "(relu) /\n--l0 (jumprelu); OUT gets one sub-folder per SAE. Resumes from "
        "OUT/checkpoint after a kill.",
    )


def run(cfg: FitConfig) -> int:
    announce_config(cfg, "fit", cfg.out)
    fit(cfg)
    return 0


__all__ = ["FitConfig", "SweepOptions", "SAESpec", "fit", "add_parser", "run"]
