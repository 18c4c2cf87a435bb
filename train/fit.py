"""Train one or several SAEs (a sweep) in a single streaming pass over an activation store.

Why one pass for a sweep: reading and shuffling activations costs as much as a small SAE step, so
a sweep over k or the L1 coefficient shares every batch. The loop is resumable: every
``checkpoint_every`` seconds the SAEs, the Adam states, the dead-latent counters and the step are
written atomically (safetensors + JSON); the data order is a pure function of the seed, so a
resumed run skips the batches it already consumed and continues exactly.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from saescope.core.sae import K_SPARSE, SAE, SAEConfig
from saescope.core.sae_io import save_sae
from saescope.train.cli_util import announce_config
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
            k=self.k if self.architecture in K_SPARSE else None,
            l1_coefficient=self.l1_coefficient,
            **provenance,
        )


@dataclass
class FitConfig:
    store: str
    out: str
    saes: list[SAESpec] = field(default_factory=lambda: [SAESpec()])
    tokens: int | None = None  # default: one pass over the store
    batch_size: int = 4096
    lr: float = 4e-4
    lr_warmup_steps: int = 100
    lr_decay_fraction: float = 0.2
    sparsity_warmup_fraction: float = 0.05
    aux_coefficient: float = 1 / 32
    dead_window_tokens: int | None = None  # default: min(1M, a fifth of the run)
    shuffle_buffer: int = 2**18
    norm_sample_tokens: int = 100_000
    seed: int = 0
    checkpoint_every: float = 120.0  # seconds
    log_every: int = 10
    resume: bool = True
    device: str = "cpu"
    threads: int | None = None
    progress: bool = True
    plots: bool = True


@dataclass
class _Member:
    """An SAE under training with its optimiser and firing counters."""

    sae: SAE
    opt: torch.optim.Adam
    since_fired: torch.Tensor  # tokens since each latent last fired
    last: dict = field(default_factory=dict)


def _open_store(path: str):
    from saescope.train.store import ActivationStore

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
            "lr": cfg.lr, "batch_size": cfg.batch_size, "steps": total_steps,
            "tokens": total_steps * cfg.batch_size, "lr_warmup_steps": cfg.lr_warmup_steps,
            "lr_decay_fraction": cfg.lr_decay_fraction,
            "sparsity_warmup_fraction": cfg.sparsity_warmup_fraction,
            "aux_coefficient": cfg.aux_coefficient,
            "dead_window_tokens": _dead_window(cfg, total_steps),
            "seed": cfg.seed, "optimizer": "adam", "unit_norm_decoder": True,
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
                tensors[f"{i}/opt/{names[id(p)]}/{key}"] = torch.as_tensor(val).detach().cpu().contiguous()
        tensors[f"{i}/since_fired"] = m.since_fired
    meta = {
        "step": step, "tokens": tokens,
        "configs": [m.sae.cfg.to_dict() for m in members],
        "time": time.time(),
    }
    tmp = ck / "state.safetensors.tmp"
    # One file, one atomic rename: the JSON metadata rides in the safetensors header.
    save_file(tensors, str(tmp), metadata={"saescope_fit_state": json.dumps(meta)})
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, ck / "state.safetensors")
    tmp_json = ck / "state.json.tmp"  # human-readable copy, also replaced atomically
    tmp_json.write_text(json.dumps(meta, indent=2))
    os.replace(tmp_json, ck / "state.json")


def _load_checkpoint(out: Path, members: list[_Member]) -> tuple[int, int] | None:
    ck = out / CHECKPOINT_DIR
    path = ck / "state.safetensors"
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["saescope_fit_state"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if len(meta["configs"]) != len(members) or any(
        c["architecture"] != m.sae.cfg.architecture or c["d_sae"] != m.sae.cfg.d_sae
        or c.get("k") != m.sae.cfg.k or c.get("l1_coefficient") != m.sae.cfg.l1_coefficient
        for c, m in zip(meta["configs"], members)
    ):
        raise ValueError(
            f"the checkpoint in {ck} was made by a different sweep; use another --out or --no-resume"
        )
    for i, m in enumerate(members):
        m.sae.load_state_dict({n: tensors[f"{i}/sae/{n}"] for n in m.sae.state_dict()})
        for n, p in m.sae.named_parameters():
            prefix = f"{i}/opt/{n}/"
            st = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            if st:
                m.opt.state[p] = {k: (v.to(p.device) if k != "step" else v) for k, v in st.items()}
        m.since_fired.copy_(tensors[f"{i}/since_fired"])
    return int(meta["step"]), int(meta["tokens"])


# ------------------------------------------------------------------------------ the loop
def _step(m: _Member, x: torch.Tensor, step: int, total: int, cfg: FitConfig) -> None:
    sae = m.sae
    sparsity_warmup = int(total * cfg.sparsity_warmup_fraction)
    lr = lr_at(step, total, cfg.lr, min(cfg.lr_warmup_steps, max(1, total // 10)), cfg.lr_decay_fraction)
    for g in m.opt.param_groups:
        g["lr"] = lr
    coef = sparsity_at(step, sparsity_warmup, sae.cfg.l1_coefficient)
    k = k_at(step, sparsity_warmup, sae.cfg.k, sae.cfg.d_sae) if sae.cfg.k else None
    dead = m.since_fired >= _dead_window(cfg, total)
    out = sae.train_forward(x, sparsity_coefficient=coef, k=k, dead_mask=dead.to(x.device),
                            aux_coefficient=cfg.aux_coefficient)
    if not math.isfinite(out.loss.item()):
        raise FloatingPointError(f"{sae.cfg.name}: loss became {out.loss.item()} at step {step}; lower --lr")
    m.opt.zero_grad(set_to_none=True)
    out.loss.backward()
    sae.remove_parallel_grads()
    m.opt.step()
    sae.normalize_decoder()
    fired = out.fired.cpu()
    m.since_fired += x.shape[0]
    m.since_fired[fired] = 0
    m.last = {"loss": out.loss.item(), "mse": out.mse.item(), "fvu": out.fvu.item(),
              "l0": out.l0.item(), "aux": out.aux.item(), "sparsity": out.sparsity.item(),
              "lr": lr, "sparsity_coefficient": coef, "k": k,
              "dead_fraction": dead.float().mean().item()}


def _dead_window(cfg: FitConfig, total_steps: int) -> int:
    """Tokens without firing after which a latent counts as dead (and AuxK trains it)."""
    if cfg.dead_window_tokens:
        return cfg.dead_window_tokens
    return max(10 * cfg.batch_size, min(1_000_000, total_steps * cfg.batch_size // 5))


def _truncate_log(path: Path, start: int) -> None:
    """Drop log records past the resumed step (written after the last checkpoint, then redone)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] < start]
    path.write_text("".join(ln + "\n" for ln in keep))


def _batches(store, cfg: FitConfig, skip: int) -> Iterator[torch.Tensor]:
    # exact resume: the stream is deterministic for a seed, so skip what was already consumed
    return store.iter_batches(cfg.batch_size, shuffle_buffer=cfg.shuffle_buffer, seed=cfg.seed,
                              loop=True, skip_batches=skip)


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
    bar = tqdm(total=total, initial=start, unit="step", disable=not cfg.progress, desc="fit",
               dynamic_ncols=True)
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
                rec = {"step": step, "tokens": seen, "tokens_per_s": tps,
                       "saes": {n: m.last for n, m in zip(names, members)}}
                log.write(json.dumps(rec) + "\n")
                log.flush()
                first = members[0].last
                bar.set_postfix(tok_s=f"{tps:,.0f}", fvu=f"{first['fvu']:.3f}", l0=f"{first['l0']:.1f}")
            if time.monotonic() - last_ck > cfg.checkpoint_every:
                _save_checkpoint(out, members, step + 1, seen)
                last_ck = time.monotonic()
    finally:
        bar.close()
        log.close()
    _save_checkpoint(out, members, total, seen)
    return _finish(cfg, store, members, names, out, seen, total)


def _finish(cfg: FitConfig, store, members: list[_Member], names: list[str], out: Path,
            seen: int, total: int) -> list[Path]:
    from saescope.train.evaluate import evaluate_sae
    from saescope.train.plots import plot_feature_frequency, plot_fvu_vs_l0

    folders, rows = [], []
    for name, m in zip(names, members):
        m.sae.eval()
        metrics = evaluate_sae(m.sae, store, max_tokens=min(200_000, store.n_tokens),
                               batch_size=cfg.batch_size, seed=cfg.seed + 1, progress=False)
        freq = metrics.pop("feature_frequency")
        m.sae.cfg.metrics = {**metrics, "train_tokens": seen,
                             "train_dead_fraction": float((m.since_fired >= _dead_window(cfg, total)).float().mean())}
        folder = save_sae(m.sae, out / name)
        folders.append(folder)
        rows.append({"name": name, **m.sae.cfg.metrics, "architecture": m.sae.cfg.architecture})
        if cfg.plots:
            plot_feature_frequency(freq, folder / "feature_frequency.png", title=name)
        print(f"{name}: FVU {metrics['fvu']:.4f}  L0 {metrics['l0']:.1f}  "
              f"dead {metrics['dead_fraction']:.2%}  dense {metrics['dense_fraction']:.2%}  -> {folder}")
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    if cfg.plots:
        plot_fvu_vs_l0(rows, out / "fvu_vs_l0.png")
    return folders


# ------------------------------------------------------------------------------ CLI
def specs_from_args(args: argparse.Namespace) -> list[SAESpec]:
    """The cartesian product of --arch x --expansion x (--k or --l1)."""
    specs = []
    for arch, exp in itertools.product(args.arch, args.expansion):
        if arch in K_SPARSE:
            specs += [SAESpec(arch, exp, k=k) for k in args.k]
        elif arch == "relu":
            specs += [SAESpec(arch, exp, k=None, l1_coefficient=l) for l in args.l1]
        else:  # jumprelu: --l0 coefficients
            specs += [SAESpec(arch, exp, k=None, l1_coefficient=l) for l in args.l0]
    return specs


def add_parser(sub) -> None:
    p = sub.add_parser(
        "fit", help="train SAEs (a sweep) on an activation store",
        description="Train one or several SAEs in one streaming pass over an activation store. "
        "The sweep is the product of --arch, --expansion and --k (k-sparse) / --l1 (relu) / "
        "--l0 (jumprelu). Resumes from OUT/checkpoint after a kill.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--store", required=True, help="activation store folder (from 'extract')")
    p.add_argument("--out", required=True, help="output folder: one sub-folder per SAE")
    p.add_argument("--arch", nargs="+", default=["topk"],
                   choices=["relu", "topk", "batchtopk", "jumprelu", "matryoshka"])
    p.add_argument("--expansion", nargs="+", type=float, default=[16.0], help="d_sae / d_model")
    p.add_argument("--k", nargs="+", type=int, default=[32], help="active latents (k-sparse archs)")
    p.add_argument("--l1", nargs="+", type=float, default=[3e-3], help="L1 coefficients (relu)")
    p.add_argument("--l0", nargs="+", type=float, default=[1e-3], help="L0 coefficients (jumprelu)")
    p.add_argument("--tokens", type=int, default=None, help="training tokens (default: the store size)")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--lr-warmup-steps", type=int, default=100)
    p.add_argument("--lr-decay-fraction", type=float, default=0.2)
    p.add_argument("--sparsity-warmup-fraction", type=float, default=0.05)
    p.add_argument("--aux-coefficient", type=float, default=1 / 32)
    p.add_argument("--dead-window-tokens", type=int, default=None,
                   help="a latent is dead after this many tokens without firing "
                   "(default: min(1M, a fifth of the run))")
    p.add_argument("--shuffle-buffer", type=int, default=2**18, help="tokens in the shuffle buffer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=float, default=120.0, help="seconds")
    p.add_argument("--no-resume", dest="resume", action="store_false")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-plots", dest="plots", action="store_false")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run, step="fit")


def run(args: argparse.Namespace) -> int:
    announce_config(args, args.out)
    cfg = FitConfig(
        store=args.store, out=args.out, saes=specs_from_args(args), tokens=args.tokens,
        batch_size=args.batch_size, lr=args.lr, lr_warmup_steps=args.lr_warmup_steps,
        lr_decay_fraction=args.lr_decay_fraction,
        sparsity_warmup_fraction=args.sparsity_warmup_fraction,
        aux_coefficient=args.aux_coefficient, dead_window_tokens=args.dead_window_tokens,
        shuffle_buffer=args.shuffle_buffer, seed=args.seed, checkpoint_every=args.checkpoint_every,
        resume=args.resume, device=args.device, threads=args.threads, plots=args.plots,
        progress=args.progress,
    )
    fit(cfg)
    return 0


__all__ = ["FitConfig", "SAESpec", "fit"]
