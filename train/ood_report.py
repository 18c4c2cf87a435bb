"""The scores of ``saescope ood-eval`` turned into numbers and prose: per-method AUROC / FPR@95
rows, the SAE-vs-raw verdict, and the markdown table printed and written to results.md.

Pure functions of summaries and result dicts, kept apart from the driver so that they can be
read (and tested) without a backbone or an activation store.
"""

from __future__ import annotations

import numpy as np

from saescope.core.ood import FAMILIES, ImageSummary, OODSuite, auroc, fpr_at_tpr


def evaluate_config(suite: OODSuite, in_test: ImageSummary, ood: dict[str, ImageSummary]) -> dict:
    """AUROC and FPR@95 of every method against every OOD set, with means over the sets."""
    in_scores = suite.scores(in_test)
    out_scores = {name: suite.scores(s) for name, s in ood.items()}
    rows = {}
    for m in in_scores:
        cells = {}
        for name in ood:
            if m not in out_scores[name]:
                continue
            cells[name] = {
                "auroc": auroc(in_scores[m], out_scores[name][m]),
                "fpr95": fpr_at_tpr(in_scores[m], out_scores[name][m], suite.tpr),
            }
        if not cells:
            continue
        rows[m] = {
            "label": suite.label(m),
            "family": suite.family(m),
            "sets": cells,
            "mean_auroc": float(np.mean([c["auroc"] for c in cells.values()])),
            "mean_fpr95": float(np.mean([c["fpr95"] for c in cells.values()])),
            # how well the calibration split's 95%-TPR threshold holds on unseen images
            "test_tpr_at_calibrated": float(np.mean(in_scores[m] <= suite.threshold(m))),
        }
    return rows


def verdict(rows: dict, tol: float = 0.005) -> dict:
    """Best SAE score vs best raw-embedding baseline by mean AUROC."""

    def best(fam: str) -> tuple[float, str] | None:
        c = [(v["mean_auroc"], m) for m, v in rows.items() if v["family"] == fam]
        return max(c) if c else None

    s, r = best("sae"), best("raw")
    if s is None or r is None:
        return {}
    diff = s[0] - r[0]
    word = "beats" if diff > tol else ("matches" if diff >= -tol else "falls short of")
    return {
        "best_sae": s[1],
        "best_sae_auroc": s[0],
        "best_raw": r[1],
        "best_raw_auroc": r[0],
        "difference": diff,
        "outcome": word,
    }


def markdown_table(cfg: dict) -> str:
    """One configuration's rows as a markdown table; the best mean AUROC per family in bold."""
    sets = cfg["ood_sets"]
    rows = cfg["rows"]
    best = {
        fam: max((v["mean_auroc"] for v in rows.values() if v["family"] == fam), default=None)
        for fam in FAMILIES
    }
    head = (
        "| method | "
        + " | ".join(f"{s} AUROC / FPR@95" for s in sets)
        + " | **mean AUROC** | **mean FPR@95** | in-dist kept at calibrated threshold |"
    )
    lines = [head, "|---" * (len(sets) + 4) + "|"]
    for v in rows.values():
        cells = [
            f"{v['sets'][s]['auroc']:.3f} / {v['sets'][s]['fpr95']:.3f}" if s in v["sets"] else "–"
            for s in sets
        ]
        mean = f"{v['mean_auroc']:.3f}"
        if best.get(v["family"]) is not None and mean == f"{best[v['family']]:.3f}":
            mean = f"**{mean}**"
        lines.append(
            f"| {v['family']}: {v['label']} | "
            + " | ".join(cells)
            + f" | {mean} | {v['mean_fpr95']:.3f} | {v['test_tpr_at_calibrated']:.1%} |"
        )
    return "\n".join(lines)


def markdown(result: dict) -> str:
    """The whole ``ood-eval`` result as markdown: the setup, then one table per configuration."""
    out = [
        "## OOD detection with SAE codes (`saescope ood-eval`)\n",
        f"Model `{result['model']}`, layer {result['layer']}; "
        f"{result['n_train']} in-distribution training images per configuration: the SAE and "
        f"the scorers are fitted on the first {1 - result['cal_fraction']:.0%}, the last "
        f"{result['cal_fraction']:.0%} (unseen by the SAE) calibrate the thresholds; "
        f"{result['n_test']} "
        "held-out test images per set. AUROC: higher is better; FPR@95: fraction of OOD "
        "images accepted at the threshold that keeps 95% of in-distribution test images, "
        "lower is better. Bold: best mean AUROC per family (SAE / raw / probe). Last column: "
        "share of in-distribution test images below the 95%-TPR threshold set on the "
        "calibration split (what the browser's verdict uses; 95% when calibration holds).",
    ]
    for cfg in result["configs"]:
        out.append(f"\n### In-distribution: `{cfg['in']}`\n")
        out.append(f"SAE: {cfg['sae']}.\n")
        out.append(markdown_table(cfg))
        v = cfg.get("verdict") or {}
        if v:
            out.append(
                f"\nBest SAE score **{cfg['rows'][v['best_sae']]['label']}** "
                f"(mean AUROC {v['best_sae_auroc']:.3f}) **{v['outcome']}** the best raw "
                f"baseline **{cfg['rows'][v['best_raw']]['label']}** "
                f"({v['best_raw_auroc']:.3f}; difference {v['difference']:+.3f}; "
                "'matches' = within ±0.005)."
            )
        for name, why in cfg.get("skipped", {}).items():
            out.append(f"\n_Skipped {name}: {why}_")
    return "\n".join(out)


__all__ = ["evaluate_config", "markdown", "markdown_table", "verdict"]
