"""Held-out evaluation of a named diffusion-steering artefact, against a random-direction control.

A module of its own because it is the measurement, not the command line: it names and scores
random directions as a control and summarises the result, usable from Python without the CLI
options; ``saescope diffusion-eval`` (in :mod:`saescope.train.diffusion`) only wraps it.
"""

from __future__ import annotations

from saescope.core import diffusion as D


def eval_markdown(result: dict) -> str:
    """The evaluation as markdown: a summary table (features vs random control) and per feature."""
    head = (
        "| directions | n | amplify raises named word (vs vocabulary) | suppress lowers it | "
        "amplify raises raw CLIP score | suppress lowers raw | named word top-1 (chance) | "
        "mean Δ relative score (amplify / suppress) |\n|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for label, s in (
        ("SAE features", result["features"]),
        ("random directions (control)", result.get("control")),
    ):
        if not s or not s.get("n"):
            continue
        lines.append(
            f"| {label} | {s['n']} | **{s['fraction_amplify_raises']:.0%}** | "
            f"{s['fraction_suppress_lowers']:.0%} | {s['fraction_amplify_raises_raw']:.0%} | "
            f"{s['fraction_suppress_lowers_raw']:.0%} | "
            f"{s['fraction_top1']:.0%} ({s['chance_top1']:.1%}) | "
            f"{s['mean_delta_amplify']:+.3f} / {s['mean_delta_suppress']:+.3f} |"
        )
    per = [
        "",
        "| feature | name | Δ when naming | Δ held-out amplify | Δ held-out suppress | "
        "Δ raw held-out amplify |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["features"]["rows"]:
        per.append(
            f"| {r['feature']} | {r['name']} | {r.get('delta_naming', float('nan')):+.3f} | "
            f"{r['delta_amplify']:+.3f} | {r['delta_suppress']:+.3f} | "
            f"{r['delta_amplify_raw']:+.3f} |"
        )
    return head + "\n".join(lines) + "\n" + "\n".join(per) + "\n"


def evaluate_artefact(
    st: D.Steerer,
    art: D.Artefact,
    eval_setting: D.Setting,
    control: bool = True,
    progress: bool = True,
    seed: int = 0,
) -> dict:
    """Held-out evaluation of the artefact's names, plus the random-direction control named and
    evaluated with exactly the same settings and push norms."""
    if not art.names:
        raise ValueError(
            f"{art.path} has no feature names yet: run 'saescope diffusion-name' first"
        )
    naming = art.manifest.get("naming") or {}
    words = naming.get("words") or D.vocabulary()
    strength = float(naming.get("strength", 8.0))
    feats = sorted(art.names)
    probes = D.feature_probes(art.sae, art.stats, feats, strength)
    res = D.evaluate_probes(
        st.pipe,
        st.scorer,
        probes,
        [art.names[f]["name"] for f in feats],
        words,
        eval_setting,
        progress,
        desc="eval features",
    )
    for r in res["rows"]:
        r["delta_naming"] = art.names[r["feature"]]["delta"]
    result = {
        "features": res,
        "strength": strength,
        "n_words": len(words),
        "eval_setting": vars(eval_setting),
        "naming_setting": {k: v for k, v in naming.items() if k != "words"},
    }
    if control:
        name_setting = D.Setting(
            prompts=naming["prompts"],
            seeds=naming["seeds"],
            steps=naming["steps"],
            guidance=naming["guidance"],
            negative_prompt=naming.get("negative_prompt", ""),
            positions=naming.get("positions", "all"),
        )
        rnd = D.random_probes(probes, seed)
        named = D.name_probes(
            st.pipe, st.scorer, rnd, words, name_setting, progress, desc="name control"
        )
        result["control"] = D.evaluate_probes(
            st.pipe,
            st.scorer,
            rnd,
            [n["name"] for n in named],
            words,
            eval_setting,
            progress,
            desc="eval control",
        )
    return result


__all__ = ["evaluate_artefact", "eval_markdown"]
