"""Image source base classes and combinators: random access by index, stable ids, no raising.

Why random access and stable ids: extraction resumes at an image *index* after a crash, and the
store records the ids, so the same index must always give the same id and the same pixels. A
source never raises for a bad image: :meth:`ImageSource.get` returns the
:class:`~saescope.core.images.ImageError` instead, so the extractor can skip it and list it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image

from saescope.core.images import ImageError, ImageInput, load_image

Loaded = Image.Image | ImageError


class ImageSource(ABC):
    """A fixed, ordered collection of images addressed by index, each with a stable string id."""

    spec: str = ""
    kind: str = ""
    label_names: list[str] | None = None

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def image_id(self, index: int) -> str:
        """Stable id of image ``index`` (recorded in stores; the same on every run)."""

    @abstractmethod
    def load(self, index: int) -> Image.Image:
        """RGB image ``index``; raises :class:`ImageError` when it cannot be read."""

    def label(self, index: int) -> int | None:
        """Class index of image ``index`` into :attr:`label_names`, or ``None`` when unlabelled."""
        return None

    @property
    def has_labels(self) -> bool:
        return self.label_names is not None

    def get(self, index: int) -> tuple[str, Loaded]:
        """``(id, image)`` or ``(id, ImageError)``: never raises for a bad image."""
        self._check(index)
        image_id = self.image_id(index)
        try:
            return image_id, self.load(index)
        except ImageError as err:
            return image_id, err
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as err:  # an unexpected decoder failure is still just one bad image
            return image_id, ImageError(f"{image_id}: unreadable ({type(err).__name__}: {err})")

    def iter(self, start: int = 0) -> Iterator[tuple[str, Loaded]]:
        for i in range(start, len(self)):
            yield self.get(i)

    def __iter__(self) -> Iterator[tuple[str, Loaded]]:
        return self.iter(0)

    def _check(self, index: int) -> None:
        if not 0 <= index < len(self):
            raise IndexError(f"image index {index} out of range for a source of {len(self)}")

    def subset(
        self, start: int = 0, stop: int | None = None, max_images: int | None = None
    ) -> ImageSource:
        """Images ``start`` .. ``stop`` (at most ``max_images`` of them), as a source."""
        n = len(self)
        stop = n if stop is None else min(int(stop), n)
        start = max(0, int(start))
        if max_images is not None:
            stop = min(stop, start + max(0, int(max_images)))
        if start == 0 and stop == n:
            return self
        return SubsetSource(self, start, max(start, stop))

    def describe(self) -> dict[str, Any]:
        """What this source is, for manifests."""
        return {
            "spec": self.spec,
            "kind": self.kind,
            "n_images": len(self),
            "label_names": self.label_names,
        }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec!r}: {len(self)} images>"


class SubsetSource(ImageSource):
    """A contiguous slice of another source (ids unchanged, so stores stay comparable)."""

    def __init__(self, base: ImageSource, start: int, stop: int):
        self.base, self.start, self.stop = base, start, stop
        self.kind, self.label_names = base.kind, base.label_names
        self.spec = base.spec

    def __len__(self) -> int:
        return self.stop - self.start

    def image_id(self, index: int) -> str:
        self._check(index)
        return self.base.image_id(self.start + index)

    def load(self, index: int) -> Image.Image:
        self._check(index)
        return self.base.load(self.start + index)

    def label(self, index: int) -> int | None:
        return self.base.label(self.start + index)

    def describe(self) -> dict[str, Any]:
        d = self.base.describe()
        d.update(n_images=len(self), start=self.start, stop=self.stop)
        return d


class ListSource(ImageSource):
    """Images held in memory (PIL images, arrays, bytes or paths), e.g. uploads or tests."""

    def __init__(
        self,
        items: Sequence[tuple[str, ImageInput]],
        labels: Sequence[int] | None = None,
        label_names: list[str] | None = None,
        spec: str = "memory",
    ):
        self.items = list(items)
        self.labels = list(labels) if labels is not None else None
        self.label_names = label_names
        self.spec, self.kind = spec, "memory"

    def __len__(self) -> int:
        return len(self.items)

    def image_id(self, index: int) -> str:
        return str(self.items[index][0])

    def load(self, index: int) -> Image.Image:
        image_id, item = self.items[index]
        if isinstance(item, Image.Image) and item.mode == "RGB":
            return item
        return load_image(item, name=str(image_id))

    def label(self, index: int) -> int | None:
        return None if self.labels is None else int(self.labels[index])


class ConcatSource(ImageSource):
    """Several sources one after the other; ids are the parts' ids (they are already unique)."""

    def __init__(self, parts: Sequence[ImageSource], spec: str):
        if not parts:
            raise ValueError("a concatenated source needs at least one part")
        self.parts = list(parts)
        self.spec, self.kind = spec, "concat"
        self._starts = np.cumsum([0] + [len(p) for p in self.parts])
        if all(p.label_names for p in self.parts):
            self.label_names = [f"{p.kind}:{n}" for p in self.parts for n in p.label_names]
            self._label_offsets = np.cumsum([0] + [len(p.label_names) for p in self.parts])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _part(self, index: int) -> tuple[int, int]:
        self._check(index)
        k = int(np.searchsorted(self._starts, index, side="right") - 1)
        return k, index - int(self._starts[k])

    def image_id(self, index: int) -> str:
        k, i = self._part(index)
        return self.parts[k].image_id(i)

    def load(self, index: int) -> Image.Image:
        k, i = self._part(index)
        return self.parts[k].load(i)

    def label(self, index: int) -> int | None:
        if self.label_names is None:
            return None
        k, i = self._part(index)
        lab = self.parts[k].label(i)
        return None if lab is None else int(self._label_offsets[k]) + lab

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["parts"] = [p.describe() for p in self.parts]
        return d


__all__ = ["ImageSource", "SubsetSource", "ListSource", "ConcatSource", "Loaded"]
