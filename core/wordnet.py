"""A small, fast reader of the WordNet 3.0 noun database (``data.noun`` + ``index.noun``).

Why our own reader: the ontology analysis needs only nouns, hypernyms and depths, offline, with
no corpus download; Debian's ``wordnet-base`` ships exactly the Princeton database files, and
their format is simple. Synset offsets are byte offsets of lines in ``data.noun``, so the file is
read once into memory (~15 MB, a few milliseconds) and a synset is parsed only when asked for
(then cached); ``index.noun`` (lemma -> senses in frequency order, which gives the ``cat.n.01``
names) is parsed on the first name lookup. ImageNet class ids (``n02121808``) are these offsets.

Conventions follow NLTK: synset names are ``<first lemma, lower case>.n.<sense number>``;
hypernyms include instance hypernyms (``moon.n.01`` is an instance of ``satellite.n.03``); depth
counts edges to ``entity.n.01`` (depth 0), ``max_depth`` along the longest path, ``min_depth``
along the shortest; the lowest common hypernyms are the common ancestors of greatest
``max_depth``.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

DEFAULT_DIR = "/usr/share/wordnet"
ROOT_OFFSET = 1740  # entity.n.01, the single root of the WordNet 3.0 noun hierarchy
HYPERNYM_POINTERS = ("@", "@i")  # hypernym, instance hypernym
_NAME = re.compile(r"^(?P<lemma>.+)\.(?P<pos>[a-z])\.(?P<sense>\d+)$")
_ID = re.compile(r"^n(?P<offset>\d{8})$")


class WordNetMissing(FileNotFoundError):
    """The WordNet 3.0 database files are not installed where we look."""


class WordNetError(LookupError):
    """A synset name, offset or lemma that WordNet does not have."""


def wordnet_dir() -> Path:
    """Where the database is read from: ``$WORDNET_DIR``, else Debian's ``/usr/share/wordnet``."""
    return Path(os.environ.get("WORDNET_DIR") or DEFAULT_DIR)


def available(root: str | os.PathLike | None = None) -> bool:
    """True when the noun database files are present (tests skip on False)."""
    root = Path(root) if root is not None else wordnet_dir()
    return (root / "data.noun").is_file() and (root / "index.noun").is_file()


class Synset:
    """One noun synset; compare and hash by offset. Created only by :class:`WordNet`."""

    __slots__ = ("wn", "offset", "lemmas", "gloss", "_parents", "_instance", "_name")

    def __init__(
        self,
        wn: WordNet,
        offset: int,
        lemmas: list[str],
        gloss: str,
        parents: tuple[int, ...],
        instance: tuple[int, ...],
    ):
        self.wn, self.offset, self.lemmas, self.gloss = wn, offset, lemmas, gloss
        self._parents, self._instance = parents, instance
        self._name: str | None = None

    # identity ---------------------------------------------------------------------------
    @property
    def id(self) -> str:
        """ImageNet-style id, e.g. ``n02121808``."""
        return f"n{self.offset:08d}"

    @property
    def name(self) -> str:
        """NLTK-style name, e.g. ``domestic_cat.n.01``."""
        if self._name is None:
            lemma = self.lemmas[0].lower()
            senses = self.wn.sense_offsets(lemma)
            sense = senses.index(self.offset) + 1 if self.offset in senses else 1
            self._name = f"{lemma}.n.{sense:02d}"
        return self._name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Synset) and other.offset == self.offset

    def __hash__(self) -> int:
        return hash(self.offset)

    def __lt__(self, other: Synset) -> bool:
        return self.name < other.name

    def __repr__(self) -> str:
        return f"Synset('{self.name}')"

    # hierarchy --------------------------------------------------------------------------
    def hypernyms(self) -> list[Synset]:
        """Class hypernyms (``@`` pointers)."""
        return [self.wn.by_offset(o) for o in self._parents]

    def instance_hypernyms(self) -> list[Synset]:
        """Classes this synset is an instance of (``@i`` pointers)."""
        return [self.wn.by_offset(o) for o in self._instance]

    def parents(self) -> list[Synset]:
        """Hypernyms and instance hypernyms: the edges every depth and path follows."""
        return [self.wn.by_offset(o) for o in self._parents + self._instance]

    def hypernym_paths(self) -> list[list[Synset]]:
        """Every path from the root to this synset (root first, this synset last)."""
        return [[self.wn.by_offset(o) for o in p] for p in self.wn._paths(self.offset)]

    def ancestors(self) -> frozenset[Synset]:
        """This synset and everything above it."""
        return frozenset(self.wn.by_offset(o) for o in self.wn._ancestors(self.offset))

    @property
    def max_depth(self) -> int:
        """Edges on the longest path to the root."""
        return self.wn._depth(self.offset, longest=True)

    @property
    def min_depth(self) -> int:
        """Edges on the shortest path to the root."""
        return self.wn._depth(self.offset, longest=False)

    def is_a(self, other: Synset) -> bool:
        """True when ``other`` is this synset or one of its ancestors."""
        return other.offset in self.wn._ancestors(self.offset)


class WordNet:
    """The noun part of one WordNet 3.0 database folder; use :func:`load` for the shared one."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else wordnet_dir()
        data, index = self.root / "data.noun", self.root / "index.noun"
        if not (data.is_file() and index.is_file()):
            raise WordNetMissing(
                f"WordNet 3.0 noun database not found in {self.root} (need data.noun and "
                "index.noun): install Debian's package with `apt-get install wordnet-base`, or set "
                "WORDNET_DIR to any WordNet 3.0 `dict` folder (the Princeton WordNet-3.0 tarball's "
                "dict/, or nltk_data/corpora/wordnet after `pip install nltk` and "
                "`nltk.download('wordnet')`). The pip `wn` package keeps WordNet in its own "
                "SQLite database, which this reader does not use."
            )
        self._data = data.read_bytes()
        self._index_path = index
        self._index: dict[str, list[int]] | None = None
        self._synsets: dict[int, Synset] = {}
        self._anc: dict[int, frozenset[int]] = {}
        self._depths: dict[tuple[int, bool], int] = {}
        self._path_cache: dict[int, list[tuple[int, ...]]] = {}
        self._lock = threading.Lock()

    # parsing ----------------------------------------------------------------------------
    def _parse(self, offset: int) -> Synset:
        data = self._data
        if not 0 <= offset < len(data) or (offset and data[offset - 1] != 0x0A):
            raise WordNetError(f"no noun synset at offset {offset:08d} in {self.root}/data.noun")
        end = data.find(b"\n", offset)
        line = data[offset : end if end >= 0 else len(data)].decode("utf-8", "replace")
        head, _, gloss = line.partition(" | ")
        tok = head.split()
        if not tok or not tok[0].isdigit() or int(tok[0]) != offset or tok[2] != "n":
            raise WordNetError(f"no noun synset at offset {offset:08d} in {self.root}/data.noun")
        n_words = int(tok[3], 16)
        lemmas = [tok[4 + 2 * i] for i in range(n_words)]
        i = 4 + 2 * n_words
        n_ptr = int(tok[i])
        parents: list[int] = []
        instance: list[int] = []
        for j in range(n_ptr):
            sym, target, pos = tok[i + 1 + 4 * j : i + 4 + 4 * j]
            if pos == "n" and sym == "@":
                parents.append(int(target))
            elif pos == "n" and sym == "@i":
                instance.append(int(target))
        return Synset(self, offset, lemmas, gloss.strip(), tuple(parents), tuple(instance))

    def _load_index(self) -> dict[str, list[int]]:
        with self._lock:
            if self._index is None:
                index: dict[str, list[int]] = {}
                for raw in self._index_path.read_bytes().split(b"\n"):
                    if not raw or raw[:1] == b" ":
                        continue  # licence header
                    tok = raw.split()
                    n = int(tok[2])
                    index[tok[0].decode("utf-8", "replace")] = [int(t) for t in tok[-n:]]
                self._index = index
        return self._index

    # lookups ----------------------------------------------------------------------------
    def by_offset(self, offset: int | str) -> Synset:
        """Synset at a data.noun offset (int, ``"02121808"`` or ``"n02121808"``)."""
        if isinstance(offset, str):
            m = _ID.match(offset.strip())
            text = m.group("offset") if m else offset.strip()
            if not text.isdigit():
                raise WordNetError(f"not a noun synset offset: {offset!r}")
            offset = int(text)
        s = self._synsets.get(offset)
        if s is None:
            s = self._synsets[offset] = self._parse(int(offset))
        return s

    def offsets(self) -> list[int]:
        """Every noun synset's offset, in file order (82,115 in WordNet 3.0)."""
        out: list[int] = []
        data, pos = self._data, 0
        while pos < len(data):
            end = data.find(b"\n", pos)
            end = len(data) if end < 0 else end
            if data[pos : pos + 1].isdigit():
                out.append(pos)
            pos = end + 1
        return out

    def sense_offsets(self, lemma: str) -> list[int]:
        """Offsets of a lemma's noun senses, most frequent first (empty when unknown)."""
        return list(self._load_index().get(lemma.strip().lower().replace(" ", "_"), []))

    def synsets(self, lemma: str) -> list[Synset]:
        """The noun senses of a lemma (``"house cat"`` or ``"house_cat"``), most frequent first."""
        return [self.by_offset(o) for o in self.sense_offsets(lemma)]

    def synset(self, key: str | int) -> Synset:
        """A synset by name (``cat.n.01``), id (``n02121808``) or offset."""
        if isinstance(key, int):
            return self.by_offset(key)
        text = key.strip()
        if _ID.match(text):
            return self.by_offset(text)
        m = _NAME.match(text)
        if not m:
            raise WordNetError(
                f"not a synset name or id: {key!r} (expected e.g. 'cat.n.01' or 'n02121808')"
            )
        if m.group("pos") != "n":
            raise WordNetError(f"{key!r}: only nouns are loaded (part of speech 'n')")
        senses = self.sense_offsets(m.group("lemma"))
        k = int(m.group("sense"))
        if not senses:
            raise WordNetError(f"{key!r}: WordNet has no noun {m.group('lemma')!r}")
        if not 1 <= k <= len(senses):
            raise WordNetError(f"{key!r}: {m.group('lemma')!r} has {len(senses)} noun senses")
        return self.by_offset(senses[k - 1])

    @property
    def root_synset(self) -> Synset:
        return self.by_offset(ROOT_OFFSET)

    # hierarchy (memoised on offsets) ------------------------------------------------------
    def _parent_offsets(self, offset: int) -> tuple[int, ...]:
        s = self.by_offset(offset)
        return s._parents + s._instance

    def _ancestors(self, offset: int) -> frozenset[int]:
        got = self._anc.get(offset)
        if got is None:
            out = {offset}
            for p in self._parent_offsets(offset):
                out |= self._ancestors(p)
            got = self._anc[offset] = frozenset(out)
        return got

    def _depth(self, offset: int, longest: bool) -> int:
        key = (offset, longest)
        got = self._depths.get(key)
        if got is None:
            parents = self._parent_offsets(offset)
            if not parents:
                got = 0
            else:
                ds = [self._depth(p, longest) for p in parents]
                got = 1 + (max(ds) if longest else min(ds))
            self._depths[key] = got
        return got

    def _paths(self, offset: int) -> list[tuple[int, ...]]:
        got = self._path_cache.get(offset)
        if got is None:
            parents = self._parent_offsets(offset)
            got = (
                [(offset,)]
                if not parents
                else [p + (offset,) for q in parents for p in self._paths(q)]
            )
            self._path_cache[offset] = got
        return got

    def common_hypernyms(self, synsets: Iterable[Synset]) -> set[Synset]:
        """Synsets that are an ancestor of (or equal to) every input."""
        sets = [self._ancestors(s.offset) for s in synsets]
        if not sets:
            return set()
        common = frozenset.intersection(*sets)
        return {self.by_offset(o) for o in common}

    def lowest_common_hypernyms(self, synsets: Iterable[Synset]) -> list[Synset]:
        """The common ancestors of greatest ``max_depth`` (sorted by name; ties are rare).

        One synset is its own lowest common hypernym.
        """
        common = self.common_hypernyms(list(synsets))
        if not common:
            return []
        deepest = max(s.max_depth for s in common)
        return sorted(s for s in common if s.max_depth == deepest)

    def lowest_common_hypernym(self, synsets: Sequence[Synset]) -> Synset:
        """The first of :meth:`lowest_common_hypernyms` (the root when nothing else is shared)."""
        found = self.lowest_common_hypernyms(synsets)
        if not found:
            raise WordNetError(f"{list(synsets)} share no hypernym")
        return found[0]


@lru_cache(maxsize=4)
def _load(root: str) -> WordNet:
    return WordNet(root)


def load(root: str | os.PathLike | None = None) -> WordNet:
    """The shared reader for ``root`` (default :func:`wordnet_dir`), loaded once per process."""
    return _load(str(Path(root) if root is not None else wordnet_dir()))


__all__ = [
    "WordNet",
    "Synset",
    "WordNetMissing",
    "WordNetError",
    "load",
    "available",
    "wordnet_dir",
    "DEFAULT_DIR",
    "ROOT_OFFSET",
]
