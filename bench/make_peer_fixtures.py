"""Write tiny checkpoints exactly as the peer tools save them, with the peers' own codes.

Why: ``saescope.core.sae_import`` folds each peer's maths (where ``b_dec`` is subtracted,
decoder-norm rescaling, activation scaling and whitening) into our SAE. The only trustworthy
check is the peer's own code on the peer's own files, so this script runs saev, SAELens and
sparsify themselves and stores, next to each checkpoint, the inputs and the codes and
reconstructions the peer computes. ``tests/test_sae_import_peers.py`` then imports every
checkpoint with saescope alone (no peer installed) and compares within 1e-5.

The peers are never installed into the project's venv. To regenerate (CPU, under a minute)::

    python3 -m venv /work/peers-venv
    /work/peers-venv/bin/pip install torch            # the CPU wheel; never torchvision
    /work/peers-venv/bin/pip install sae-lens eai-sparsify
    # paper-era saev; --no-deps because its open-clip-torch dependency pulls torchvision
    /work/peers-venv/bin/pip install --no-deps saev==0.1.0
    /work/peers-venv/bin/pip install beartype jaxtyping einops tyro orjson scipy
    # the current saev is not on PyPI: export OSU-NLP-Group/saev's src/ at a commit, e.g.
    #   git archive 3d73f1f7122738563404e4c50a98d897aa18a7d0 src/saev/__init__.py \
    #       src/saev/helpers.py src/saev/nn | tar -x -C /work/peers-src/saev-head
    /work/peers-venv/bin/python bench/make_peer_fixtures.py \
        --saev-head-src /work/peers-src/saev-head/src

The current-saev cases run in a child process whose import path starts at that export (both
saev versions are the package ``saev``). Sizes: d_in 16, d_sae 64, 32 tokens; the whole folder
is about 200 kB. Versions of everything used go to ``peer_versions.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "peer_checkpoints"
D_IN, D_SAE, K, N_TOKENS = 16, 64, 8, 32
SAEV_HEAD_COMMIT = "3d73f1f7122738563404e4c50a98d897aa18a7d0"


# ------------------------------------------------------------------------------ shared
def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def inputs() -> torch.Tensor:
    """The 32 tokens every case is evaluated on (raw activations, mean and scale non-trivial)."""
    path = OUT / "inputs.safetensors"
    if path.exists():
        return load_file(str(path))["x"]
    x = torch.randn(N_TOKENS, D_IN, generator=gen(0)) * 1.5 + 0.7
    OUT.mkdir(parents=True, exist_ok=True)
    save_file({"x": x}, str(path))
    return x


def weights(seed: int, dec_norms: tuple[float, float] | None = None) -> dict[str, torch.Tensor]:
    """Random non-trivial SAE weights (b_dec non-zero) in the (d_in, d_sae) layout.

    ``dec_norms`` draws each decoder row's norm uniformly from that range (a mid-training
    SAELens decoder), otherwise the rows have unit norm.
    """
    g = gen(seed)
    w_dec = torch.randn(D_SAE, D_IN, generator=g)
    w_dec /= w_dec.norm(dim=-1, keepdim=True)
    if dec_norms is not None:
        lo, hi = dec_norms
        w_dec *= lo + (hi - lo) * torch.rand(D_SAE, 1, generator=g)
    return {
        "W_enc": torch.randn(D_IN, D_SAE, generator=g) / D_IN**0.5,
        "b_enc": torch.randn(D_SAE, generator=g) * 0.3,
        "W_dec": w_dec,
        "b_dec": torch.randn(D_IN, generator=g) * 0.5,
    }


def load_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, value in tensors.items():
            getattr(module, name).copy_(value)


def expect(case: str, codes: torch.Tensor, recon: torch.Tensor) -> None:
    """Store the peer's own codes [N, d_sae] and reconstructions [N, d_in] for ``case``."""
    folder = OUT / case
    folder.mkdir(parents=True, exist_ok=True)
    codes, recon = codes.detach().float().contiguous(), recon.detach().float().contiguous()
    assert codes.shape == (N_TOKENS, D_SAE) and recon.shape == (N_TOKENS, D_IN), case
    assert (codes != 0).any(), f"{case}: no active latent at all"
    save_file({"codes": codes, "recon": recon}, str(folder / "expected.safetensors"))


def same(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert torch.allclose(a, b, atol=1e-6), f"{what}: {float((a - b).abs().max())}"


# ------------------------------------------------------------------------------ saev
def saev_paper() -> None:
    """saev 0.1.0 (the paper's code, published checkpoints' format): subtracts b_dec."""
    import saev.config
    import saev.nn

    x = inputs()
    cfg = saev.config.SparseAutoencoder(d_vit=D_IN, exp_factor=D_SAE // D_IN, seed=3)
    sae = saev.nn.SparseAutoencoder(cfg).eval()
    load_into(sae, weights(1))
    folder = OUT / "saev_paper_relu"
    saev.nn.dump(str(folder / "sae.pt"), sae)
    sae = saev.nn.load(str(folder / "sae.pt"))  # what saev itself reads back
    with torch.no_grad():
        x_hat, f_x, _ = sae(x)
    expect("saev_paper_relu", f_x, x_hat)


def saev_head() -> None:
    """Current saev (``d_model``, schema 5): no b_dec subtraction; Relu, TopK and BatchTopK."""
    from saev.nn import modeling

    x = inputs()
    activations = {
        "saev_head_relu": modeling.Relu(),
        "saev_head_topk": modeling.TopK(top_k=K),
        "saev_head_batchtopk": modeling.BatchTopK(top_k=K),
    }
    for seed, (case, act) in enumerate(activations.items(), start=10):
        cfg = modeling.SparseAutoencoderConfig(d_model=D_IN, d_sae=D_SAE, activation=act)
        sae = modeling.SparseAutoencoder(cfg)
        load_into(sae, weights(seed))
        if case == "saev_head_batchtopk":
            sae.activation.threshold.fill_(0.4)  # the running threshold a trained SAE has
        modeling.dump(OUT / case / "sae.pt", sae)
        sae = modeling.load(OUT / case / "sae.pt").eval()
        with torch.no_grad():
            enc = sae.encode(x)
            x_hat = sae.decode(enc.f_x)[:, -1, :]
        expect(case, enc.f_x, x_hat)


# ------------------------------------------------------------------------------ SAELens
def saelens_model(cls, cfg_cls, seed: int, dec_norms=None, **cfg):
    sae = cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, **cfg))
    load_into(sae, weights(seed, dec_norms))
    return sae.eval()


def saelens_codes(sae, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        codes = sae.encode(x)
        return codes, sae.decode(codes)


def check_reload(sae, folder: Path, x: torch.Tensor, what: str) -> None:
    """SAELens's own loader reads the folder back to the same maths (a sanity check)."""
    from sae_lens import SAE

    codes, recon = saelens_codes(sae, x)
    loaded = SAE.load_from_disk(folder)
    codes2, recon2 = saelens_codes(loaded, x)
    same(codes, codes2, f"{what} codes")
    same(recon, recon2, f"{what} recon")


def saelens_topk() -> None:
    """TopK trainer checkpoint (rescale_acts_by_decoder_norm, decoder norms 0.10-0.35) and the
    inference folder SAELens derives from it; both must give the trainer's codes."""
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    x = inputs()
    sae = saelens_model(
        TopKTrainingSAE, TopKTrainingSAEConfig, 20, (0.10, 0.35), k=K,
        rescale_acts_by_decoder_norm=True,
    )  # fmt: skip
    for case, save in (
        ("saelens_topk_training", sae.save_model),
        ("saelens_topk_inference", sae.save_inference_model),
    ):
        save(OUT / case / "checkpoint")
        check_reload(sae, OUT / case / "checkpoint", x, case)
        expect(case, *saelens_codes(sae, x))


def saelens_standard_and_jumprelu() -> None:
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

    x = inputs()
    sae = saelens_model(StandardSAE, StandardSAEConfig, 21, apply_b_dec_to_input=False)
    sae.save_model(OUT / "saelens_standard_no_b_dec" / "checkpoint")
    check_reload(sae, OUT / "saelens_standard_no_b_dec" / "checkpoint", x, "standard")
    expect("saelens_standard_no_b_dec", *saelens_codes(sae, x))

    sae = saelens_model(JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig, 22, (0.2, 0.9))
    with torch.no_grad():
        sae.threshold.copy_(0.1 + 0.5 * torch.rand(D_SAE, generator=gen(23)))
    sae.save_model(OUT / "saelens_jumprelu_training" / "checkpoint")
    check_reload(sae, OUT / "saelens_jumprelu_training" / "checkpoint", x, "jumprelu")
    expect("saelens_jumprelu_training", *saelens_codes(sae, x))


def saelens_batchtopk() -> None:
    """BatchTopK / Matryoshka trainer checkpoints: per-token maths only exists after SAELens's
    own conversion (save_inference_model -> JumpReLU at the learned threshold); the expected
    codes are that JumpReLU SAE's, read back by SAELens's loader."""
    from sae_lens import SAE
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.matryoshka_batchtopk_sae import (
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )

    x = inputs()
    variants = {
        "saelens_batchtopk": (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, {}),
        "saelens_matryoshka": (
            MatryoshkaBatchTopKTrainingSAE,
            MatryoshkaBatchTopKTrainingSAEConfig,
            {"matryoshka_widths": [8, 32, D_SAE]},
        ),
    }
    for seed, (name, (cls, cfg_cls, extra)) in enumerate(variants.items(), start=24):
        sae = saelens_model(cls, cfg_cls, seed, (0.10, 0.35), k=float(K), **extra)
        sae.topk_threshold.fill_(0.12)
        sae.save_model(OUT / f"{name}_training" / "checkpoint")
        sae.save_inference_model(OUT / f"{name}_inference" / "checkpoint")
        inference = SAE.load_from_disk(OUT / f"{name}_inference" / "checkpoint")
        for case in (f"{name}_training", f"{name}_inference"):
            expect(case, *saelens_codes(inference, x))


def saelens_normalised() -> None:
    """Trainer checkpoints whose inputs were scaled (expected_average_only_in) or whitened
    (covariance_whitening): the scaler/whitening files sit next to the weights, as SAELens's
    trainer writes them; expected codes are SAELens's own fold of them into the weights."""
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.activation_scaler import ActivationScaler, ActivationWhitening

    x = inputs()
    sae = saelens_model(
        TopKTrainingSAE, TopKTrainingSAEConfig, 26, (0.10, 0.35), k=K,
        normalize_activations="expected_average_only_in",
    )  # fmt: skip
    folder = OUT / "saelens_topk_scaled_training" / "checkpoint"
    sae.save_model(folder)
    ActivationScaler(scaling_factor=0.37).save(str(folder / "activation_scaler.json"))
    folded = copy.deepcopy(sae)
    folded.fold_activation_norm_scaling_factor(0.37)
    expect("saelens_topk_scaled_training", *saelens_codes(folded, x))

    g = gen(27)
    a = torch.randn(D_IN, D_IN, generator=g, dtype=torch.float64) * 0.3
    matrix = torch.eye(D_IN, dtype=torch.float64) + a @ a.T
    whitening = ActivationWhitening(
        mean=torch.randn(D_IN, generator=g, dtype=torch.float64),
        matrix=matrix,
        inverse_matrix=torch.linalg.inv(matrix),
    )
    sae = saelens_model(
        StandardTrainingSAE, StandardTrainingSAEConfig, 28, (0.3, 1.0),
        normalize_activations="covariance_whitening", apply_b_dec_to_input=False,
    )  # fmt: skip
    folder = OUT / "saelens_standard_whitened_training" / "checkpoint"
    sae.save_model(folder)
    ActivationScaler(whitening=whitening).save(str(folder / "activation_scaler.json"))
    folded = copy.deepcopy(sae)
    folded.fold_activation_whitening(whitening.mean, whitening.matrix, whitening.inverse_matrix)
    expect("saelens_standard_whitened_training", *saelens_codes(folded, x))


def saelens_refused() -> None:
    """Folders whose maths our SAE cannot reproduce: the importer must refuse, naming why."""
    from sae_lens.saes.gated_sae import GatedSAE, GatedSAEConfig
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    for i, mode in enumerate(("layer_norm", "constant_norm_rescale")):
        sae = saelens_model(StandardSAE, StandardSAEConfig, 30 + i, normalize_activations=mode)
        sae.save_model(OUT / f"refused_saelens_{mode}" / "checkpoint")
    sae = saelens_model(
        TopKTrainingSAE, TopKTrainingSAEConfig, 32, (0.1, 0.35), k=K,
        normalize_activations="expected_average_only_in",
    )  # fmt: skip
    sae.save_model(OUT / "refused_saelens_scaled_without_factor" / "checkpoint")
    gated = GatedSAE(GatedSAEConfig(d_in=D_IN, d_sae=D_SAE))  # its own b_gate/r_mag tensors
    gated.save_model(OUT / "refused_saelens_gated" / "checkpoint")


# ------------------------------------------------------------------------------ sparsify
def sparsify_cases() -> None:
    """sparsify's trainer layout: a run folder (config.json) with one sub-folder per hookpoint
    (cfg.json + sae.safetensors, written by SparseCoder.save_to_disk)."""
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.config import TrainConfig

    x = inputs()
    cfg = SparseCoderConfig(num_latents=D_SAE, k=K)
    run = OUT / "sparsify_topk" / "checkpoint"
    sae = SparseCoder(D_IN, cfg)
    t = weights(40)
    with torch.no_grad():
        sae.encoder.weight.copy_(t["W_enc"].T)
        sae.encoder.bias.copy_(t["b_enc"])
        sae.W_dec.copy_(t["W_dec"])
        sae.b_dec.copy_(t["b_dec"])
    sae.save_to_disk(run / "layers.3")
    TrainConfig(sae=cfg, hookpoints=["layers.3"], run_name="checkpoint").save_json(
        str(run / "config.json")
    )
    sae = SparseCoder.load_from_disk(run / "layers.3")
    with torch.no_grad():
        top_acts, top_indices, _ = sae.encode(x)
        codes = torch.zeros(N_TOKENS, D_SAE).scatter_(-1, top_indices, top_acts)
        recon = sae.decode(top_acts, top_indices)
        same(sae(x).sae_out, recon, "sparsify forward")
    expect("sparsify_topk", codes, recon)

    refused = {
        "transcoder": SparseCoderConfig(num_latents=D_SAE, k=K, transcode=True),
        "skip": SparseCoderConfig(num_latents=D_SAE, k=K, skip_connection=True),
        "groupmax": SparseCoderConfig(num_latents=D_SAE, k=K, activation="groupmax"),
    }
    for name, cfg in refused.items():
        SparseCoder(D_IN, cfg).save_to_disk(OUT / f"refused_sparsify_{name}" / "layers.0")


# ------------------------------------------------------------------------------ driver
def versions(saev_head_src: str) -> dict[str, str]:
    from importlib.metadata import version

    return {
        "torch": torch.__version__,
        "saev (paper era)": version("saev"),
        "saev (current)": f"OSU-NLP-Group/saev@{SAEV_HEAD_COMMIT} ({saev_head_src})",
        "sae-lens": version("sae-lens"),
        "eai-sparsify": version("eai-sparsify"),
        "python": sys.version.split()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saev-head-src", required=True, help="src/ of a current saev")
    parser.add_argument("--phase", choices=["all", "saev-head"], default="all")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.phase == "saev-head":
        saev_head()
        return
    inputs()
    saev_paper()
    env = {**os.environ, "PYTHONPATH": args.saev_head_src}
    subprocess.run(
        [sys.executable, __file__, "--phase", "saev-head", "--saev-head-src", args.saev_head_src],
        env=env,
        check=True,
    )
    saelens_topk()
    saelens_standard_and_jumprelu()
    saelens_batchtopk()
    saelens_normalised()
    saelens_refused()
    sparsify_cases()
    (OUT / "peer_versions.json").write_text(json.dumps(versions(args.saev_head_src), indent=2))
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total / 1024:.0f} kB)")


if __name__ == "__main__":
    main()
