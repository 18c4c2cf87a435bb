"""The WordNet 3.0 noun reader against known facts of the real database (Debian wordnet-base)."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saescope.core.wordnet import (
    ROOT_OFFSET,
    WordNet,
    WordNetError,
    WordNetMissing,
    available,
    load,
)

pytestmark = pytest.mark.skipif(
    not available(),
    reason="WordNet 3.0 not installed: apt-get install wordnet-base (or set "
    "WORDNET_DIR to a WordNet 3.0 dict folder)",
)


@pytest.fixture(scope="module")
def wn() -> WordNet:
    return load()


@pytest.fixture(scope="module")
def offsets(wn) -> list[int]:
    return wn.offsets()


def test_loads_fast_and_completely() -> None:
    t0 = time.perf_counter()
    fresh = WordNet()
    fresh.synset("cat.n.01")  # data file + index parsed
    assert time.perf_counter() - t0 < 2.0
    assert len(fresh.offsets()) == 82115  # noun synsets in WordNet 3.0


def test_cat_chain_reaches_the_root(wn) -> None:
    cat = wn.synset("cat.n.01")
    assert cat.lemmas == ["cat", "true_cat"]
    assert "feline mammal" in cat.gloss
    paths = cat.hypernym_paths()
    assert len(paths) == 1
    names = [s.name for s in paths[0]]
    assert names[0] == "entity.n.01" and names[-1] == "cat.n.01"
    for n in ("feline.n.01", "carnivore.n.01", "mammal.n.01", "animal.n.01", "organism.n.01"):
        assert n in names
    assert (
        names.index("animal.n.01")
        < names.index("mammal.n.01")
        < names.index("carnivore.n.01")
        < names.index("feline.n.01")
    )
    assert cat.hypernyms() == [wn.synset("feline.n.01")]
    assert cat.min_depth == cat.max_depth == len(names) - 1 == 13


def test_names_ids_and_offsets_agree(wn) -> None:
    house_cat = wn.synset("n02121808")  # the ImageNet id of 'house cat'
    assert house_cat.name == "domestic_cat.n.01"
    assert house_cat.id == "n02121808" and house_cat.offset == 2121808
    assert wn.synset("house_cat.n.01") == house_cat  # another lemma of the same synset
    assert house_cat.hypernyms() == [wn.synset("cat.n.01"), wn.synset("domestic_animal.n.01")]
    assert wn.by_offset("02121808") is house_cat  # cached: one object per synset
    assert wn.root_synset.name == "entity.n.01" and wn.root_synset.offset == ROOT_OFFSET
    # sense order follows index.noun: bank.n.01 is the river bank, n.02 the institution
    assert "sloping land" in wn.synset("bank.n.01").gloss
    assert "financial institution" in wn.synset("bank.n.02").gloss
    assert [s.name for s in wn.synsets("house cat")] == ["domestic_cat.n.01"]
    assert wn.synsets("no-such-word-xyz") == []


def test_depths_and_lowest_common_hypernyms(wn) -> None:
    cat, dog = wn.synset("cat.n.01"), wn.synset("dog.n.01")
    assert wn.lowest_common_hypernyms([cat, dog]) == [wn.synset("carnivore.n.01")]
    assert wn.lowest_common_hypernyms([cat]) == [cat]
    assert wn.lowest_common_hypernyms([cat, wn.synset("domestic_cat.n.01")]) == [cat]
    # dog has two hypernym paths (canine and domestic animal): depths differ
    assert (dog.min_depth, dog.max_depth) == (8, 13)
    assert len(dog.hypernym_paths()) == 2
    assert wn.root_synset.max_depth == 0 and wn.synset("physical_entity.n.01").max_depth == 1
    assert wn.lowest_common_hypernym([cat, wn.synset("one.n.01")]) == wn.synset("entity.n.01")
    assert wn.lowest_common_hypernym([wn.synset("one.n.01"), wn.synset("two.n.01")]) == wn.synset(
        "digit.n.01"
    )
    shoes = [wn.synset("sandal.n.01"), wn.synset("gym_shoe.n.01"), wn.synset("boot.n.01")]
    assert wn.lowest_common_hypernym(shoes) == wn.synset("footwear.n.02")


def test_instance_hypernyms_count_as_parents(wn) -> None:
    moon = wn.synset("moon.n.01")
    assert moon.hypernyms() == []
    assert moon.instance_hypernyms() == [wn.synset("satellite.n.03")]
    assert moon.parents() == moon.instance_hypernyms()
    assert moon.is_a(wn.synset("celestial_body.n.01"))
    assert moon.max_depth == wn.synset("satellite.n.03").max_depth + 1


def test_errors_are_clear(wn, tmp_path) -> None:
    with pytest.raises(WordNetError, match="no noun 'qwertyuiop'"):
        wn.synset("qwertyuiop.n.01")
    with pytest.raises(WordNetError, match="has 8 noun senses"):
        wn.synset("cat.n.99")
    with pytest.raises(WordNetError, match="only nouns"):
        wn.synset("run.v.01")
    with pytest.raises(WordNetError, match="not a synset name"):
        wn.synset("cat")
    with pytest.raises(WordNetError, match="no noun synset at offset"):
        wn.by_offset(1741)  # inside entity's line
    with pytest.raises(WordNetError, match="no noun synset at offset"):
        wn.by_offset(10**9)
    with pytest.raises(WordNetMissing) as err:
        WordNet(tmp_path)
    assert "wordnet-base" in str(err.value) and "WORDNET_DIR" in str(err.value)
    assert "`wn`" in str(err.value)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_lch_is_a_common_ancestor_no_deeper_than_its_inputs(wn, offsets, data) -> None:
    picks = data.draw(st.lists(st.sampled_from(offsets), min_size=1, max_size=5, unique=True))
    syns = [wn.by_offset(o) for o in picks]
    lchs = wn.lowest_common_hypernyms(syns)
    assert lchs, "the noun hierarchy has a single root"
    common = wn.common_hypernyms(syns)
    for lch in lchs:
        assert lch in common
        for s in syns:
            assert s.is_a(lch) and lch in s.ancestors()
            assert lch.max_depth <= s.max_depth
            assert lch == s or lch.max_depth < s.max_depth
        assert all(c.max_depth <= lch.max_depth for c in common)
    assert wn.root_synset in common


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_paths_run_root_to_synset_along_parent_links(wn, offsets, data) -> None:
    s = wn.by_offset(data.draw(st.sampled_from(offsets)))
    paths = s.hypernym_paths()
    lengths = [len(p) - 1 for p in paths]
    assert min(lengths) == s.min_depth and max(lengths) == s.max_depth
    for p in paths:
        assert p[0] == wn.root_synset and p[-1] == s
        for parent, child in zip(p, p[1:]):
            assert parent in child.parents()
    assert wn.synset(s.name) == s  # names resolve back through index.noun
    assert wn.synset(s.id) == s
