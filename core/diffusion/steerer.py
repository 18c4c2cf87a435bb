"""The runtime: an artefact with its pipeline and scorer loaded, making steered image pairs.

Why one object: the app and the bench both need "this prompt, this feature, this strength ->
before/after images and the name's scores", with the pipeline and scorer loaded once.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from saescope.core.diffusion.artefact import Artefact
from saescope.core.diffusion.encoding import encode_prompts
from saescope.core.diffusion.naming import relative
from saescope.core.diffusion.pipeline import check_sae_fits, load_pipeline
from saescope.core.diffusion.scorer import ClipScorer
from saescope.core.diffusion.steering import generate, steer_embeddings
from saescope.core.diffusion.vocabulary import vocabulary


class Steerer:
    """An artefact with its pipeline and scorer loaded: what the app and the bench use."""

    def __init__(
        self, artefact: Artefact, pipe=None, scorer: ClipScorer | None = None, device: str = "cpu"
    ):
        self.art = artefact
        self.pipe = pipe if pipe is not None else load_pipeline(artefact.pipeline, device)
        check_sae_fits(artefact.sae, self.pipe)
        self._scorer = scorer
        self.device = device

    @property
    def scorer(self) -> ClipScorer:
        if self._scorer is None:
            self._scorer = ClipScorer(self.art.scorer, self.device)
        return self._scorer

    def pair(
        self,
        prompt: str,
        feature: int,
        strength: float,
        seed: int = 0,
        steps: int = 4,
        guidance: float = 5.0,
        negative_prompt: str = "",
        positions: str | list[int] = "all",
    ) -> tuple[Image.Image, Image.Image, dict]:
        """Unsteered and steered image of one prompt and seed, with the CLIP scores of the
        feature's name (when it has one) on both."""
        f = self.art.sae.check_feature(feature)
        enc = encode_prompts(self.pipe, [prompt])
        neg = encode_prompts(self.pipe, [negative_prompt], allow_empty=True).embeds
        steered = steer_embeddings(
            self.art.sae, enc.embeds, enc.mask(positions), add={f: self.art.amount(f, strength)}
        )
        both = torch.cat([enc.embeds, steered])
        before, after = generate(self.pipe, both, neg, [seed, seed], steps, guidance)
        info: dict[str, Any] = {
            "feature": f,
            "strength": float(strength),
            "embedding_change": float((steered - enc.embeds).norm()),
        }
        name = self.art.names.get(f, {}).get("name")
        if name:
            words = self.words if name in self.words else self.words + [name]
            s = self.scorer.scores([before, after], words)
            j = words.index(name)
            rel = relative(s)[:, j]
            info.update(
                name=name,
                score_before=float(s[0, j]),
                score_after=float(s[1, j]),
                relative_before=float(rel[0]),
                relative_after=float(rel[1]),
            )
        return before, after, info

    @property
    def words(self) -> list[str]:
        """The naming vocabulary (relative scores are measured against it)."""
        return list((self.art.manifest.get("naming") or {}).get("words") or vocabulary())


__all__ = ["Steerer"]
