"""Training speed of the SAE step against this machine's own dense-matmul limit.

    python -m bench.train_speed [--d 384] [--expansion 16] [--k 32] [--batch 4096]

Measures, in one run: (1) the machine's dense fp32 matmul FLOP/s on the SAE's own shapes (the
limit); (2) tokens/s of the full training step (forward, backward, parallel-gradient removal,
Adam, decoder renormalisation) for TopK, BatchTopK and ReLU+L1 at width ``expansion x d``; (3) a
naive TopK step that decodes with a dense matmul, as the implementation baseline. Reports each
step's useful FLOPs per token and the fraction of the limit it reaches.
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.report import write_section
from saescope.core.sae import SAE, SAEConfig


def matmul_flops(b: int, d: int, w: int, repeats: int = 5) -> float:
    """Best dense fp32 FLOP/s over the three matmul shapes an SAE step uses."""
    best = 0.0
    x, we, wd = torch.randn(b, d), torch.randn(d, w), torch.randn(w, d)
    z = torch.randn(b, w)
    for f in (lambda: x @ we, lambda: z @ wd, lambda: x.t() @ z):
        f()
        t = time.perf_counter()
        for _ in range(repeats):
            f()
        best = max(best, 2 * b * d * w * repeats / (time.perf_counter() - t))
    return best


def step_flops(arch: str, d: int, w: int, k: int, dense_decode: bool = False) -> float:
    """Useful FLOPs per token of one training step (multiply-add = 2 FLOPs).

    Encoder: forward 2dw + weight gradient 2dw. Decoder: dense 2dw forward, 2dw weight gradient,
    2dw code gradient; k-sparse decoding (embedding_bag) costs 2kd for each of the three.
    """
    enc = 4 * d * w
    if arch == "relu" or dense_decode:
        return enc + 6 * d * w
    return enc + 6 * k * d


def time_steps(sae: SAE, x: torch.Tensor, steps: int, dense_decode: bool = False) -> float:
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    dead = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)

    def one() -> None:
        if dense_decode:  # baseline: TopK codes scattered into a dense matrix, dense decode
            xn = sae.normalize(x)
            vals, idx = sae.pre_acts(xn).topk(sae.cfg.k, dim=-1)
            z = torch.zeros(x.shape[0], sae.cfg.d_sae).scatter(-1, idx, torch.relu(vals))
            loss = (z @ sae.W_dec + sae.b_dec - xn).pow(2).mean()
        else:
            loss = sae.train_forward(x, dead_mask=dead).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_parallel_grads()
        opt.step()
        sae.normalize_decoder()

    one()
    one()
    t = time.perf_counter()
    for _ in range(steps):
        one()
    return steps * x.shape[0] / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--d", type=int, default=384, help="activation width (DINOv2-S: 384)")
    p.add_argument("--expansion", type=int, default=16)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    d, w, k, b = args.d, args.d * args.expansion, args.k, args.batch
    limit = matmul_flops(b, d, w)
    print(f"dense fp32 matmul limit: {limit / 1e9:.1f} GFLOP/s")
    torch.manual_seed(0)
    x = torch.randn(b, d) * 3 + 1
    rows = []
    for name, arch, dense in [
        ("TopK (sparse decode)", "topk", False),
        ("BatchTopK (sparse decode)", "batchtopk", False),
        ("ReLU+L1 (dense)", "relu", False),
        ("TopK naive dense decode (baseline)", "topk", True),
    ]:
        sae = SAE(SAEConfig(d_in=d, d_sae=w, architecture=arch, k=k, l1_coefficient=1e-3))
        sae.set_normalization(x)
        tps = time_steps(sae, x, args.steps, dense_decode=dense)
        flops = step_flops(arch, d, w, k, dense)
        frac = tps * flops / limit
        rows.append(
            {"step": name, "tokens_per_s": tps, "flops_per_token": flops, "fraction_of_limit": frac}
        )
        print(f"{name:38s} {tps:10,.0f} tok/s  {flops / 1e6:6.2f} MFLOP/tok  {frac:6.1%} of limit")
    topk, naive = rows[0], rows[3]
    speedup = topk["tokens_per_s"] / naive["tokens_per_s"]
    print(f"TopK sparse decode vs naive dense decode: {speedup:.2f}x tokens/s")
    md = [
        "## SAE training speed (`python -m bench.train_speed`)\n",
        f"Width {w} ({args.expansion}x of d={d}), k={k}, batch {b} tokens, fp32. Limit = this "
        f"machine's best dense fp32 matmul on the step's shapes, measured in the same run: "
        f"**{limit / 1e9:.1f} GFLOP/s**.\n",
        "| step | tokens/s | useful MFLOP/token | fraction of matmul limit |",
        "|---|---|---|---|",
    ]
    md += [
        f"| {r['step']} | {r['tokens_per_s']:,.0f} | {r['flops_per_token'] / 1e6:.2f} | "
        f"{r['fraction_of_limit']:.1%} |"
        for r in rows
    ]
    md.append(
        f"\nTopK with sparse (embedding-bag) decoding runs **{speedup:.2f}x** the tokens/s of the "
        "naive dense-decode TopK step. Target: the TopK step at 16x reaches >= 40% of the limit."
    )
    data = {"limit_flops": limit, "rows": rows, "speedup_vs_naive": speedup, "args": vars(args)}
    if not args.no_write:
        write_section("train_speed", "\n".join(md), data)
    return data


if __name__ == "__main__":
    main()
