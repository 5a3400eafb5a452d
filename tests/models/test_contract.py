"""The contract of an export: what it holds (the adaptation plan included), reading it, the compatibility check."""

import json
import re
from pathlib import Path

import pytest

from exports import export, vit
from medmae.data.preprocess import Preprocessing
from medmae.errors import ContractError, ExportError
from medmae.models.contract import (
    FORMAT_VERSION,
    AdaptationPlan,
    check_contract,
    contract_problem,
    make_contract,
    parse_contract,
    plan_problem,
    read_contract,
)


# --------------------------------------------------------------------------------------------- contract


def contract_of(tmp_path, **kw) -> dict:
    return read_contract(export(tmp_path / "enc.safetensors", vit(**kw)))


def test_contract_mismatches_name_the_field(tmp_path):
    c2d = contract_of(tmp_path)
    same = {**Preprocessing(2, 1, {"name": "minmax"}, orientation=None).contract(), "patch_size": [8, 8]}
    assert check_contract(c2d, arch="vit", preprocessing=same) == []
    ct = {**same, "intensity": {"name": "ct_window", "lo": -175.0, "hi": 250.0}}
    with pytest.raises(ContractError,
                       match=r"intensity: encoder \{'name': 'minmax'\}, fine-tuning \{'name': 'ct_window'"):
        check_contract(c2d, arch="vit", preprocessing=ct)
    with pytest.raises(ContractError, match=r"patch_size: encoder \[8, 8\], fine-tuning \[16, 16\]"):
        check_contract(c2d, arch="vit", preprocessing={**same, "patch_size": [16, 16]})
    three_d = {**Preprocessing(3, 1, {"name": "minmax"}).contract(), "patch_size": [8, 8, 8]}
    with pytest.raises(ContractError, match="spatial_dims: encoder 2, fine-tuning 3") as err:
        check_contract(c2d, arch="vit", preprocessing=three_d)
    assert "init.allow_mismatch" in str(err.value)
    notes = check_contract(c2d, arch="vit", preprocessing=ct, allow=("intensity",))
    assert len(notes) == 1 and notes[0].startswith("intensity:")
    # allowing one field does not let another through
    with pytest.raises(ContractError, match="patch_size") as err:
        check_contract(c2d, arch="vit", preprocessing={**ct, "patch_size": [16, 16]}, allow=("intensity",))
    assert "intensity" not in str(err.value)


def test_contract_compares_ct_window_values(tmp_path):
    c = contract_of(tmp_path)
    c["preprocessing"]["intensity"] = {"name": "ct_window", "lo": -175.0, "hi": 250.0}
    mine = {**Preprocessing(2, 1, {"name": "ct_window", "lo": -175.0, "hi": 250.0}, orientation=None).contract(),
            "patch_size": [8, 8]}
    assert check_contract(c, arch="vit", preprocessing=mine) == []
    mine["intensity"] = {"name": "ct_window", "lo": -1000.0, "hi": 1000.0}
    with pytest.raises(ContractError, match="intensity"):
        check_contract(c, arch="vit", preprocessing=mine)


# ------------------------------------------------------------------------------------- the adaptation plan


def test_an_export_carries_its_adaptation_plan(tmp_path):
    c = contract_of(tmp_path, img=32)
    assert c["format_version"] == FORMAT_VERSION == 2
    assert c["adaptation"] == {"stem_key": "patch_embed.proj.weight",
                               "pos_embed": {"key": "pos_embed", "grid": [4, 4], "interpolate": True, "cls_slot": False},
                               "extra_parts": [], "key_prefix": "encoder."}
    plan = AdaptationPlan.from_json(c["adaptation"])
    assert plan.as_json() == c["adaptation"] and plan.module_path == "encoder"
    resenc = AdaptationPlan(stem_key="stem.conv.weight", extra_parts=("decoder",))
    assert AdaptationPlan.from_json(resenc.as_json()) == resenc and resenc.as_json()["pos_embed"] is None


def test_a_contract_without_a_plan_is_format_1():
    c = make_contract(arch="vit", encoder={"img_size": [8, 8], "patch_size": [4, 4]}, preprocessing={})
    assert c["format_version"] == 1 and "adaptation" not in c and contract_problem(c) is None
    old = read_contract(Path(__file__).parent / "fixtures" / "export_v1" / "resenc" / "decoder.safetensors")
    assert old["format_version"] == 1 and old["part"] == "decoder" and "adaptation" not in old


@pytest.mark.parametrize("change,says", [
    ({"stem_key": 3}, "adaptation.stem_key must be a tensor name"),
    ({"pos_embed": {"grid": [4, 0]}}, "adaptation.pos_embed.grid must be a list of positive integers"),
    ({"pos_embed": {"grid": [4, 4], "interpolate": "yes"}}, "adaptation.pos_embed.interpolate must be a bool"),
    ({"pos_embed": [4, 4]}, "adaptation.pos_embed must be a mapping or null"),
    ({"extra_parts": ["../../etc/passwd"]}, "adaptation.extra_parts must be a list of part names"),
    ({"extra_parts": "decoder"}, "adaptation.extra_parts must be a list of part names"),
    ({"key_prefix": "encoder"}, "adaptation.key_prefix must be '' or dotted names ending with '.'"),
])
def test_a_bad_plan_is_an_export_error_naming_the_field(tmp_path, change, says):
    good = contract_of(tmp_path)
    text = json.dumps({**good, "adaptation": {**good["adaptation"], **change}})
    with pytest.raises(ExportError, match=rf"^x\.safetensors: bad medmae_contract metadata: {re.escape(says)}"):
        parse_contract(text, "x.safetensors")
    assert plan_problem("not a mapping") == "'adaptation' must be a mapping, got str"
