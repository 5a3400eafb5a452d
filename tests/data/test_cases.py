"""The shared case types: ``distinct`` (one pass, codes into the distinct values), ``tag_cases``, ``Chain``."""

from __future__ import annotations

import numpy as np
import pytest

from medmae.data.cases import Case, Chain, distinct, tag_cases


def case(cid: str, **kw: str | None) -> Case:
    return Case(cid, (f"/d/{cid}.png",), cid, **kw)


def test_distinct_gives_first_seen_values_and_each_cases_code():
    cases = [case("a", split="train", modality="CT"), case("b"), case("c", split="train", modality="MR")]
    values, codes = distinct(cases, "split")
    assert values == ["train", None] and codes.tolist() == [0, 1, 0] and codes.dtype == np.int64
    values, codes = distinct(cases, "split", "modality")
    assert values == [("train", "CT"), (None, None), ("train", "MR")] and codes.tolist() == [0, 1, 2]
    assert distinct([], "split")[0] == [] and len(distinct([], "split")[1]) == 0


def test_distinct_over_a_chain_remaps_each_parts_codes_to_one_set_of_values():
    a = [case("a", modality="CT"), case("b", modality="MR")]
    b = [case("c", modality="MR"), case("d", modality="XR"), case("e", modality="CT")]
    values, codes = distinct(Chain([a, [], b]), "modality")
    assert values == ["CT", "MR", "XR"] and codes.tolist() == [0, 1, 1, 2, 0]


def test_tag_cases_overrides_fills_in_and_leaves_untouched_cases_as_they_are():
    tagged, own = case("a"), case("b", modality="MR")
    out = tag_cases([tagged, own], default_modality="CT")
    assert [c.modality for c in out] == ["CT", "MR"] and out[1] is own, "a case with a modality keeps it"
    out = tag_cases([tagged, own], modality="XR", source="pool")
    assert [(c.modality, c.source) for c in out] == [("XR", "pool"), ("XR", "pool")]


def test_a_chain_indexes_slices_and_iterates_its_parts_in_order():
    chain = Chain([[0, 1], [], [2, 3, 4]])
    assert len(chain) == 5 and [chain[i] for i in range(5)] == list(chain) == [0, 1, 2, 3, 4]
    assert chain[-1] == 4 and chain[1:4] == [1, 2, 3]
    with pytest.raises(IndexError):
        chain[5]
