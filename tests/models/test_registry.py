"""Backbone families: registration, lookup by ``model.arch``, each family's config section and parts."""

from dataclasses import replace

import pytest

from medmae.config import ModelConfig
from medmae.config.checks import ARCH_ONLY_KEYS
from medmae.errors import ConfigError
from medmae.models import registry
from medmae.models.registry import FAMILIES, RESENC, SWIN, VIT, family, linear_classifier, register


def test_the_built_in_families_are_registered_through_register():
    assert FAMILIES == {"vit": VIT, "swin": SWIN, "resenc": RESENC}
    custom = register(replace(SWIN, name="swin-test"))
    try:
        assert family("swin-test") is custom and FAMILIES["swin-test"] is custom
    finally:
        FAMILIES.pop("swin-test")


def test_an_unknown_arch_is_a_config_error_naming_model_arch():
    with pytest.raises(ConfigError, match=r"^model\.arch: unknown architecture 'convnext'; known: resenc, swin, vit$"):
        family("convnext")


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_family_reads_its_own_config_section(name):
    fam = family(name)
    assert fam.config_key in ARCH_ONLY_KEYS[name]  # config.yaml keeps the section of the run's family
    assert isinstance(fam.section(ModelConfig()), fam.config_section)


def test_families_share_the_default_classifier():
    assert VIT.build_classifier is SWIN.build_classifier is RESENC.build_classifier is linear_classifier


def test_extra_parts_name_the_exports_and_their_targets():
    assert (VIT.extra_parts, SWIN.extra_parts, RESENC.extra_parts) == ((), (), ("decoder",))
    assert (VIT.pos_embed_key, SWIN.pos_embed_key, RESENC.pos_embed_key) == ("pos_embed", None, None)
    assert not hasattr(registry, "load_extra_parts")  # loading is models.adapt's
