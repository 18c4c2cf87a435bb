"""The streaming core of ``saescope exemplars``: a running top-k of images per SAE feature.

Why its own module: :mod:`saescope.train.exemplars` builds exemplar folders (store and image
inputs, CLI); this is the part that must stay exact and fast. See that module's docstring for
the design; the per-source cap (at most N exemplars of a feature from one original image) is
:func:`cap_per_source`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from saescope.core.exemplars import ExemplarError, histogram_edges
from saescope.core.sae import Codes
from saescope.core.tokens import TokenKind, TokenLayout, parse_kinds

FP16_MAX = 65504.0


# ----------------------------------------------------------------------------- accumulation
def codes_to_coo(codes: Codes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The positive codes of a batch as (token row, feature, value) triplets.

    Why: statistics, per-image maxima and patch maps only ever need the firing codes, and for
    k-sparse SAEs this avoids materialising the dense ``[N, d_sae]`` matrix at all.
    """
    if codes.indices is not None:
        assert codes.values is not None
        values, indices = codes.values.cpu(), codes.indices.cpu()
        rows, slot = (values > 0).nonzero(as_tuple=True)
        return rows, indices[rows, slot], values[rows, slot]
    assert codes.dense is not None
    # numpy's compare + flatnonzero is ~3x faster than torch's (dense > 0).nonzero() on CPU
    dense = codes.dense.detach().cpu().contiguous().numpy().reshape(-1)
    flat = np.flatnonzero(dense > 0)
    rows, feats = np.divmod(flat, codes.dense.shape[-1])
    return torch.from_numpy(rows), torch.from_numpy(feats), torch.from_numpy(dense[flat])


def rank_key(values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """int64 keys ordering (value desc, image index asc) in one comparison.

    Why: one ``topk`` over these keys replaces two stable sorts, and ties between equal
    activations always keep the earlier image, so results do not depend on the batch size.
    Values must be >= 0 (their float32 bit patterns then order like the values); index -1 (an
    empty slot) ranks before any image of equal value, so a zero never displaces an empty slot.
    """
    bits = values.float().contiguous().view(torch.int32).long()
    return (bits << 32) | (0xFFFFFFFF - (indices + 1))


INT64_MIN = -(2**63)
EMPTY_GROUP = -1  # the group of an empty slot: never capped


def cap_per_source(keys: torch.Tensor, groups: torch.Tensor, per_source: int) -> torch.Tensor:
    """``keys`` [R, C] with every candidate beyond the ``per_source`` best of its group (same
    row, same group id) set to the lowest int64, so a ``topk`` never picks it.

    Why this keeps the streaming pass exact: an image left out here is beaten by
    ``per_source`` images of its own source, so it can never be among the final top-k either;
    and an image that drops out of the slots never needs to come back, because every slot that
    leaves (through the cap or the top-k) is replaced by a better image. Candidates of group
    ``EMPTY_GROUP`` (empty slots) are never capped. Two small sorts per row, no Python loop.
    """
    order = keys.argsort(dim=1, descending=True)
    g = groups.gather(1, order)  # groups in key order, best first
    g_sorted, perm = torch.sort(g, dim=1, stable=True)  # equal groups stay best first
    C = g.shape[1]
    pos = torch.arange(C).expand_as(g_sorted)
    new = torch.ones_like(g_sorted, dtype=torch.bool)
    new[:, 1:] = g_sorted[:, 1:] != g_sorted[:, :-1]
    first = torch.where(new, pos, torch.zeros_like(pos)).cummax(dim=1).values
    over_sorted = (pos - first >= per_source) & (g_sorted != EMPTY_GROUP)
    over = torch.zeros_like(over_sorted).scatter_(1, perm, over_sorted)  # back to key order
    excluded = torch.zeros_like(over).scatter_(1, order, over)  # back to candidate order
    return keys.masked_fill(excluded, INT64_MIN)


class ExemplarAccumulator:
    """Running top-k images per feature, their patch maps, and per-feature statistics.

    Feed it the codes of whole images (``update``); state is ``O(d_sae x k x n_patches)``.
    With ``per_source`` N (``None``/0 = unlimited) at most N exemplars of a feature share a
    group id (``update``'s ``image_groups``: the original image of augmented views).
    """

    def __init__(
        self,
        d_sae: int,
        k: int,
        layout: TokenLayout,
        kinds: Iterable[str | TokenKind],
        bin_edges: torch.Tensor | None = None,
        per_source: int | None = None,
    ):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if per_source is not None and int(per_source) < 0:
            raise ValueError(f"per_source must be >= 0 (0 or None: unlimited), got {per_source}")
        self.per_source = int(per_source) if per_source else None
        self.d_sae, self.k, self.layout = int(d_sae), int(k), layout
        self.kinds = parse_kinds(list(kinds))
        if TokenKind.PATCH not in self.kinds:
            raise ExemplarError(
                f"exemplar maps need patch tokens; the SAE was trained on "
                f"{[k.value for k in self.kinds]}"
            )
        stored = layout.kinds_of(self.kinds)
        self.tokens_per_image = len(stored)
        patch_rows = [i for i, kind in enumerate(stored) if kind is TokenKind.PATCH]
        self.n_patches = len(patch_rows)
        self.all_patches = self.n_patches == self.tokens_per_image
        # token position within an image -> patch slot (-1 for CLS/register tokens)
        self._patch_of = torch.full((self.tokens_per_image,), -1, dtype=torch.long)
        self._patch_of[patch_rows] = torch.arange(self.n_patches)
        self.bin_edges = (histogram_edges() if bin_edges is None else bin_edges).float()
        self._inner_edges = self.bin_edges[1:-1].contiguous()
        self.n_bins = len(self.bin_edges) - 1
        F = self.d_sae
        self.slot_values = torch.zeros(F, k)
        self.slot_indices = torch.full((F, k), -1, dtype=torch.long)
        # group (origin) of each slot's image; kept only when the per-source cap is on
        self.slot_groups = (
            torch.full((F, k), EMPTY_GROUP, dtype=torch.long) if self.per_source else None
        )
        self._max_group = EMPTY_GROUP  # the largest group id fed so far
        # rows are zeroed when an image enters a slot; never-used slots are zeroed at the end
        self.slot_maps = torch.empty(F, k, self.n_patches, dtype=torch.float16)
        self.count = torch.zeros(F, dtype=torch.long)
        self.sums = torch.zeros(F, dtype=torch.float64)
        self.max = torch.zeros(F)
        self.histogram = torch.zeros(F * self.n_bins, dtype=torch.long)
        self.n_tokens = 0
        self.n_images = 0

    @torch.no_grad()
    def update(
        self,
        first_index: int,
        n_images: int,
        codes: Codes,
        image_indices: torch.Tensor | None = None,
        image_groups: torch.Tensor | None = None,
    ) -> None:
        """Add the codes of ``n_images`` consecutive images (``n_images x tokens_per_image`` rows).

        ``image_indices`` [n_images] (ascending) overrides ``first_index + arange(n_images)``,
        e.g. for sources with skipped images. ``image_groups`` [n_images] (int >= 0, or any
        negative but -1 for a group of its own) names each image's source image for the
        per-source cap; by default every image is its own group.

        Runs on one intra-op thread: these are many small ops (bincounts, scatters, a top-k over
        [F, k + B]), and torch's thread pool costs more than it saves on them -- measured 2x the
        whole pass on a busy 2-core machine -- while the encoder's matmul keeps every thread.
        """
        threads = torch.get_num_threads()
        if threads > 1:
            torch.set_num_threads(1)
        try:
            self._update(first_index, n_images, codes, image_indices, image_groups)
        finally:
            if threads > 1:
                torch.set_num_threads(threads)

    def _update(
        self,
        first_index: int,
        n_images: int,
        codes: Codes,
        image_indices: torch.Tensor | None,
        image_groups: torch.Tensor | None,
    ) -> None:
        F, T, B = self.d_sae, self.tokens_per_image, n_images
        rows, feats, vals = codes_to_coo(codes)
        self.n_tokens += B * T
        self.n_images += B
        # statistics over every token of the SAE's kinds
        self.count += torch.bincount(feats, minlength=F)
        self.sums += torch.bincount(feats, weights=vals.double(), minlength=F)
        self.max.scatter_reduce_(0, feats, vals.float(), "amax")
        bins = torch.bucketize(vals.float(), self._inner_edges, right=True)
        self.histogram += torch.bincount(feats * self.n_bins + bins, minlength=F * self.n_bins)
        # per-image maxima over patch tokens
        image, patch = rows // T, self._patch_of[rows % T]
        if not self.all_patches:
            sel = patch >= 0
            image, patch, feats, vals = image[sel], patch[sel], feats[sel], vals[sel]
        key = image * F + feats
        image_max = torch.zeros(B * F).scatter_reduce_(0, key, vals.float(), "amax")
        image_max = image_max.view(B, F).t()  # [F, B]
        if image_indices is None:
            image_indices = torch.arange(first_index, first_index + B)
        if image_groups is None:
            image_groups = image_indices
        elif len(image_groups) != B or bool((image_groups == EMPTY_GROUP).any()):
            raise ValueError(f"image_groups must be {B} group ids other than {EMPTY_GROUP}")
        self._merge(image_max, image_indices, image_groups.long(), key, patch, vals)

    def _merge(
        self,
        image_max: torch.Tensor,
        image_indices: torch.Tensor,
        image_groups: torch.Tensor,
        key: torch.Tensor,
        patch: torch.Tensor,
        vals: torch.Tensor,
    ) -> None:
        """Merge a batch's per-image maxima into the slots; write maps of entering images."""
        F, k = self.d_sae, self.k
        B = image_max.shape[1]
        # only features where some image beats the current weakest slot (ties: earlier wins)
        rows = (image_max > self.slot_values.min(1).values[:, None]).any(1).nonzero()[:, 0]
        if not len(rows):
            return
        cand = torch.cat(
            [
                rank_key(self.slot_values[rows], self.slot_indices[rows]),
                rank_key(image_max[rows], image_indices.expand(len(rows), B)),
            ],
            1,
        )
        if self.per_source:
            cand = self._cap(cand, rows, image_groups)
        top = cand.topk(k, dim=1, sorted=False).indices
        kept = torch.zeros_like(cand, dtype=torch.bool).scatter_(1, top, True)
        # each row evicts as many slots as batch images enter; row-major nonzero pairs them up
        r_out, slot = (~kept[:, :k]).nonzero(as_tuple=True)
        r_in, b = kept[:, k:].nonzero(as_tuple=True)
        if not len(r_in):
            return
        assert torch.equal(r_out, r_in)
        f = rows[r_in]
        self.slot_values[f, slot] = image_max[f, b]
        self.slot_indices[f, slot] = image_indices[b]
        if self.slot_groups is not None:
            self.slot_groups[f, slot] = image_groups[b]
        # patch maps of the entering (image, feature) pairs, written straight from the batch's
        # firing codes into the freed slots (no dense [entrants, n_patches] intermediate)
        lut = torch.full((B * F,), -1, dtype=torch.long)
        lut[b * F + f] = torch.arange(len(f))
        entry = lut[key]
        hit = entry >= 0
        entry = entry[hit]
        row = f * k + slot  # rows of slot_maps viewed as [F * k, n_patches]
        flat = self.slot_maps.view(-1, self.n_patches)
        flat.index_fill_(0, row, 0)
        flat.index_put_((row[entry], patch[hit]), vals[hit].float().clamp_(max=FP16_MAX).half())

    def _cap(self, cand: torch.Tensor, rows: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """Apply :func:`cap_per_source` to the candidate rows where it can change the top-k.

        Only batch images that beat the row's weakest slot can enter (an entrant that pushes
        out a slot of its own source is better than that slot, so the k-th best never drops
        below it), and the slots already respect the cap: a row needs the cap only when some
        batch source holds more than N of its slots + contending images. Counting that is a
        few ``[rows, k + B]`` scatters; the two sorts of the cap run on those rows alone.
        """
        assert self.slot_groups is not None and self.per_source
        k, B, R = self.k, len(groups), len(rows)
        fresh = bool(groups.min() > self._max_group)  # e.g. origin = index: no augmented views
        self._max_group = max(self._max_group, int(groups.max()))
        if fresh and len(torch.unique(groups)) == B:
            return cand  # no slot holds a batch source, and each batch source has one image
        slot_groups = self.slot_groups[rows]
        contending = cand[:, k:] > cand[:, :k].min(1, keepdim=True).values  # [R, B]
        batch_groups, column = torch.unique(groups, return_inverse=True)
        counts = torch.zeros(R, len(batch_groups), dtype=torch.long)
        counts.scatter_add_(1, column.expand(R, B), contending.long())
        pos = torch.searchsorted(batch_groups, slot_groups).clamp_(max=len(batch_groups) - 1)
        counts.scatter_add_(1, pos, (batch_groups[pos] == slot_groups).long())
        need = (counts > self.per_source).any(1).nonzero()[:, 0]
        if not len(need):
            return cand
        g = torch.cat([slot_groups[need], groups.expand(len(need), B)], 1)
        cand[need] = cap_per_source(cand[need], g, self.per_source)
        return cand

    def ordered(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(indices, values, maps) with each feature's exemplars best first, empty slots last.

        Reorders the maps in place, a block of features at a time (no second ``[F, k, P]``
        buffer), so call it once, at the end.
        """
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # memory-bound row copies: see update()
        try:
            return self._ordered()
        finally:
            torch.set_num_threads(threads)

    def _ordered(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        order = rank_key(self.slot_values, self.slot_indices).argsort(dim=1, descending=True)
        indices = self.slot_indices.gather(1, order)
        values = self.slot_values.gather(1, order)
        if self.slot_groups is not None:
            self.slot_groups = self.slot_groups.gather(1, order)
        maps = self.slot_maps
        step = max(1, (1 << 22) // max(1, self.k * self.n_patches))
        for a in range(0, self.d_sae, step):
            o = order[a : a + step]
            rows = (o + torch.arange(len(o))[:, None] * self.k).view(-1)
            block = maps[a : a + step].reshape(-1, self.n_patches)
            maps[a : a + step] = block.index_select(0, rows).view(len(o), self.k, self.n_patches)
        empty = (indices < 0).view(-1).nonzero()[:, 0]
        maps.view(-1, self.n_patches).index_fill_(0, empty, 0)  # never-written slots
        self.slot_indices, self.slot_values = indices, values
        return indices, values, maps

    def stats(self) -> dict[str, torch.Tensor]:
        n = max(1, self.n_tokens)
        return {
            "frequency": (self.count.double() / n).float(),
            "mean": (self.sums / n).float(),
            "mean_active": (self.sums / self.count.clamp_min(1)).float(),
            "max": self.max.clone(),
            "histogram": self.histogram.view(self.d_sae, self.n_bins).clone(),
            "bin_edges": self.bin_edges.clone(),
        }


__all__ = [
    "ExemplarAccumulator",
    "cap_per_source",
    "codes_to_coo",
    "rank_key",
    "EMPTY_GROUP",
    "FP16_MAX",
]
