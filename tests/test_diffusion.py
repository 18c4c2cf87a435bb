"""Diffusion steering on a tiny random StableDiffusion pipeline built from configs (offline).

The properties that make steering trustworthy: an empty edit reproduces the unsteered
embeddings exactly (and the pipeline's own images), edits touch only the chosen token positions,
the error-term and additive forms agree, classifier-free guidance sees the steered conditional
and the unsteered negative embeddings, and naming/evaluation run end to end.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from saescope.core import diffusion as D
from saescope.core.sae import SAE, SAEConfig, ShapeMismatch
from saescope.core.steering import Edit

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is fastest


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(pipeline folder, pipeline, scorer, SAE, stats): the SAE is briefly trained on real
    text-encoder outputs so that its features fire."""
    from saescope.train.diffusion import collect_activations, corpus_prompts, fit_text_sae

    folder = D.save_tiny(tmp_path_factory.mktemp("diffusion") / "tiny")
    pipe = D.load_pipeline(folder)
    acts = collect_activations(pipe, corpus_prompts(True, None, max_prompts=160), progress=False)
    sae = fit_text_sae(
        acts,
        "topk",
        4.0,
        4,
        steps=40,
        batch_size=256,
        lr=3e-3,
        progress=False,
        model_id=str(folder),
        token_kinds=["text"],
    )
    scorer = D.ClipScorer(folder / D.SCORER_DIR)
    return folder, pipe, scorer, sae, D.feature_stats(sae, acts)


def test_tiny_tokenizer_keeps_words_whole_and_reads_any_text(tiny) -> None:
    _, pipe, *_ = tiny
    tok = pipe.tokenizer
    for w in D.vocabulary() + D.OBJECTS:
        assert tok.convert_ids_to_tokens(tok(w).input_ids) == [
            "<|startoftext|>",
            w + "</w>",
            "<|endoftext|>",
        ]
    ids = tok("Zebra ünïcode 42!").input_ids  # unknown words fall back to byte pieces, no UNK
    assert tok.unk_token_id not in ids[1:-1] and len(ids) > 6


def test_encode_prompts_matches_the_pipeline_and_marks_positions(tiny) -> None:
    _, pipe, *_ = tiny
    prompts = ["a red car", "a photo of a striped horse in the street"]
    enc = D.encode_prompts(pipe, prompts)
    ours, _ = pipe.encode_prompt(prompts, "cpu", 1, False)
    assert torch.equal(enc.embeds, ours)
    t = enc.input_ids.shape[1]
    assert enc.eos.tolist() == [4, 10]
    m = enc.mask("prompt")
    assert m[0].nonzero().flatten().tolist() == [1, 2, 3, 4]
    assert enc.mask("all")[:, 0].sum() == 0 and enc.mask("all")[:, 1:].all()
    assert enc.mask([2, -1])[1].nonzero().flatten().tolist() == [2, t - 1]
    with pytest.raises(ValueError, match="outside"):
        enc.mask([t])
    with pytest.raises(ValueError, match="empty prompt"):
        D.encode_prompts(pipe, ["   "])


def test_zero_edits_reproduce_the_embeddings_exactly(tiny) -> None:
    _, pipe, _, sae, _ = tiny
    enc = D.encode_prompts(pipe, ["a green cup", "a photo of a wooden boat"])
    mask = enc.mask("all")
    assert D.steer_embeddings(sae, enc.embeds, mask) is enc.embeds
    assert D.steer_embeddings(sae, enc.embeds, mask, add={3: 0.0}) is enc.embeds
    # a real pass through encode/decode whose edit changes nothing: bit-for-bit the same
    same = D.steer_embeddings(sae, enc.embeds, mask, edits=[Edit(5, scale=1.0)])
    assert same is not enc.embeds and torch.equal(same, enc.embeds)


def test_steering_changes_only_the_chosen_positions(tiny) -> None:
    _, pipe, _, sae, stats = tiny
    f = D.alive_features(stats)[0]
    enc = D.encode_prompts(pipe, ["a blue house", "a picture of a snowy tree in the street"])
    for positions in ([2, 3], "prompt", "all"):
        mask = enc.mask(positions)
        out = D.steer_embeddings(sae, enc.embeds, mask, add={f: 3.0})
        changed = (out != enc.embeds).any(-1)
        assert torch.equal(changed, mask), positions
        assert torch.equal(out[~mask], enc.embeds[~mask])
    # switching a feature off changes only tokens where it was active
    mask = enc.mask("all")
    codes = sae.encode(enc.embeds[mask])
    g = int(codes.gt(0).sum(0).argmax())
    off = D.steer_embeddings(sae, enc.embeds, mask, edits=[Edit(g, scale=0.0)])
    moved = (off[mask] != enc.embeds[mask]).any(-1)
    assert torch.equal(moved, codes[:, g] > 0)


def test_error_term_form_equals_adding_the_decoder_direction(tiny) -> None:
    _, pipe, _, sae, stats = tiny
    f = D.alive_features(stats)[1]
    enc = D.encode_prompts(pipe, ["a yellow bird"])
    mask = enc.mask("prompt")
    amount = 2.5
    a = D.steer_embeddings(sae, enc.embeds, mask, add={f: amount})
    vec = D.feature_vector(sae, f, amount)
    b = D.add_direction(enc.embeds, vec, float(vec.norm()), mask)
    assert torch.allclose(a, b, atol=1e-5)
    assert float(vec.norm()) == pytest.approx(amount * float(sae.norm_scale), rel=1e-5)


def test_classifier_free_guidance_sees_steered_conditional_and_unsteered_negative(tiny) -> None:
    _, pipe, _, sae, stats = tiny
    f = D.alive_features(stats)[0]
    enc = D.encode_prompts(pipe, ["a photo of a dog", "a photo of a cat"])
    neg = D.encode_prompts(pipe, ["blurry"]).embeds
    steered = D.steer_embeddings(sae, enc.embeds, enc.mask("all"), add={f: 4.0})
    seen: list[torch.Tensor] = []
    hook = pipe.unet.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["encoder_hidden_states"].clone()),
        with_kwargs=True,
    )
    try:
        D.generate(pipe, steered, neg, [0, 1], steps=2, guidance=5.0)
        with_cfg = list(seen)
        seen.clear()
        D.generate(pipe, steered, neg, [0, 1], steps=2, guidance=1.0)
    finally:
        hook.remove()
    assert len(with_cfg) == 2
    for ehs in with_cfg:  # diffusers stacks [negative; conditional]
        assert torch.equal(ehs[:2], neg.expand(2, -1, -1))
        assert torch.equal(ehs[2:], steered)
    assert all(torch.equal(e, steered) for e in seen)  # guidance <= 1: no unconditional pass


def test_unsteered_generation_is_the_pipelines_own(tiny) -> None:
    _, pipe, *_ = tiny
    enc = D.encode_prompts(pipe, ["a photo of a horse"])
    neg = D.encode_prompts(pipe, [""], allow_empty=True).embeds
    ours = D.generate(pipe, enc.embeds, neg, [7], steps=2, guidance=4.0)[0]
    theirs = pipe(
        "a photo of a horse",
        negative_prompt="",
        num_inference_steps=2,
        guidance_scale=4.0,
        generator=torch.Generator().manual_seed(7),
    ).images[0]
    assert ours.size == (32, 32) and np.array_equal(np.asarray(ours), np.asarray(theirs))


def test_clip_scorer_preprocesses_without_torchvision(tiny) -> None:
    _, _, scorer, *_ = tiny
    imgs = [Image.new("RGB", (64, 40), (255, 0, 0)), Image.new("L", (20, 50), 128)]
    px = scorer.preprocess(imgs)
    assert px.shape == (2, 3, 32, 32)
    red = (1.0 - D.CLIP_MEAN[0]) / D.CLIP_STD[0]
    assert torch.allclose(px[0, 0], torch.full((32, 32), red), atol=1e-4)
    s = scorer.scores(imgs, ["red", "blue", "stone"])
    assert s.shape == (2, 3) and bool((s.abs() <= 100 + 1e-3).all())
    assert torch.allclose(D.relative(s).sum(-1), torch.zeros(2), atol=1e-4)


def test_clear_errors_for_bad_input(tiny, tmp_path) -> None:
    _, pipe, _, sae, _ = tiny
    wrong = SAE(SAEConfig(d_in=48, d_sae=96, k=4))
    with pytest.raises(ShapeMismatch, match="text encoder width 32"):
        D.check_sae_fits(wrong, pipe)
    with pytest.raises(ValueError, match="unknown feature 999"):
        D.feature_vector(sae, 999)
    enc = D.encode_prompts(pipe, ["a red car"])
    with pytest.raises(ValueError, match="unknown feature"):
        D.steer_embeddings(sae, enc.embeds, enc.mask("all"), add={sae.cfg.d_sae: 1.0})
    with pytest.raises(FileNotFoundError, match="not a diffusers pipeline folder"):
        D.load_pipeline(tmp_path)
    (tmp_path / "empty.txt").write_text("\n# only a comment\n")
    with pytest.raises(ValueError, match="holds no prompts"):
        D.read_prompt_file(tmp_path / "empty.txt")


def test_artefact_round_trip_and_checksums(tiny, tmp_path) -> None:
    folder, _, _, sae, stats = tiny
    names = {1: {"name": "red", "delta": 0.5}}
    D.save_artefact(
        tmp_path / "art", sae, stats, {"pipeline": str(folder), "scorer": None, "tiny": True}, names
    )
    art = D.load_artefact(tmp_path / "art")
    assert art.names == names and art.tiny and art.label(1) == "#1 · red" and art.label(2) == "#2"
    assert art.scorer == str(folder / D.SCORER_DIR)
    assert all(
        torch.equal(a, b) for a, b in zip(sae.state_dict().values(), art.sae.state_dict().values())
    )
    stats_file = tmp_path / "art" / D.STATS_FILE
    stats_file.write_text(stats_file.read_text().replace("0", "1", 1))
    with pytest.raises(ValueError, match="checksum"):
        D.load_artefact(tmp_path / "art")
    with pytest.raises(FileNotFoundError, match="not a diffusion-steering artefact"):
        D.load_artefact(tmp_path)


def test_naming_and_evaluation_run_end_to_end(tiny) -> None:
    _, pipe, scorer, sae, stats = tiny
    feats = D.sample_features(stats, 2, seed=0)
    probes = D.feature_probes(sae, stats, feats, strength=8.0)
    words = ["red", "blue", "striped", "night"]
    name_set = D.Setting(prompts=D.neutral_prompts(["car"]), seeds=[0, 1], steps=2)
    named = D.name_probes(pipe, scorer, probes, words, name_set, progress=False)
    assert [n["feature"] for n in named] == feats
    for n in named:  # the name is the word whose relative score rose most when naming
        assert n["name"] in words and n["delta"] == pytest.approx(
            max(d for _, d in n["top"]), abs=1e-4
        )
        assert n["top"][0][0] == n["name"]
    eval_set = D.Setting(prompts=D.neutral_prompts(["dog"]), seeds=[100], steps=2)
    res = D.evaluate_probes(
        pipe, scorer, probes, [n["name"] for n in named], words, eval_set, progress=False
    )
    assert res["n"] == 2 and 0.0 <= res["fraction_amplify_raises"] <= 1.0
    assert res["fraction_amplify_raises"] == np.mean([r["delta_amplify"] > 0 for r in res["rows"]])
    assert all(r["delta_amplify"] != 0 for r in res["rows"])  # the push really changed the images


def test_push_to_a_hub_target_and_load_back(tiny, local_hub, tmp_path) -> None:
    folder, _, _, sae, stats = tiny
    art = D.save_artefact(
        tmp_path / "art",
        sae,
        stats,
        {"pipeline": str(folder), "scorer": None},
        {0: {"name": "blue", "delta": 0.1}},
    )
    url = D.push_artefact(art, "me/text-sae", api=local_hub(tmp_path / "hub"))
    assert url.endswith("me/text-sae")
    back = D.load_artefact(tmp_path / "hub" / "me" / "text-sae")
    assert back.names == {0: {"name": "blue", "delta": 0.1}} and back.pipeline == str(folder)
    (art / D.NAMES_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="feature_names.json is missing"):
        D.push_artefact(art, "me/broken", api=local_hub(tmp_path / "hub"))
