"""The one registry shape, the defaults in one place, settings from a signature, the stain->channel lookup."""

import pytest

from napari_dinoloc.core import defaults
from napari_dinoloc.core.backbones import BACKBONES
from napari_dinoloc.core.embedding import EmbedSettings, signature
from napari_dinoloc.core.errors import DinolocError
from napari_dinoloc.core.finetune import FinetuneSettings
from napari_dinoloc.core.heads import HEADS, LogisticHead, make_head
from napari_dinoloc.core.registry import Registry
from napari_dinoloc.core.stains import channel_of, channel_order
from napari_dinoloc.core.strategies import STRATEGIES


def test_a_registry_looks_up_by_name_and_lists_the_names_when_it_cannot():
    shapes = Registry("shape", default="circle")
    shapes.register("circle", 1)
    shapes.register("square", 2)
    assert shapes.lookup("square") == 2 and shapes["circle"] == 1
    assert shapes.names() == ("circle", "square") and list(shapes) == ["circle", "square"]
    assert "circle" in shapes and "oval" not in shapes and len(shapes) == 2
    assert list(shapes.values()) == [1, 2] and shapes.get("oval") is None
    with pytest.raises(DinolocError, match="Unknown shape 'oval': choose one of circle, square"):
        shapes.lookup("oval")
    del shapes["square"]
    assert shapes.names() == ("circle",)


def test_the_three_registries_share_the_shape_and_take_their_default_from_defaults():
    assert BACKBONES.default == defaults.BACKBONE == "dinoloc-cells" and defaults.BACKBONE in BACKBONES
    assert BACKBONES[defaults.BACKBONE].source == "package"  # the default works offline
    assert STRATEGIES.default == defaults.STRATEGY == "natural" and STRATEGIES.names() == ("natural", "replicate", "protein-only", "bag-of-channels", "all-stains")
    assert HEADS.default == defaults.HEAD == "logistic" and HEADS.lookup("logistic") is LogisticHead
    assert HEADS.names() == ("knn", "logistic", "mlp")
    with pytest.raises(DinolocError, match="Unknown backbone 'vit-huge'.*dino-vits16"):
        BACKBONES.lookup("vit-huge")
    with pytest.raises(DinolocError, match="Unknown head 'svm': choose one of knn, logistic, mlp"):
        make_head("svm")


def test_settings_start_from_the_defaults():
    assert EmbedSettings().strategy == defaults.STRATEGY and EmbedSettings().embedding == defaults.EMBEDDING
    assert FinetuneSettings().head_kind == defaults.HEAD and FinetuneSettings().level == defaults.FINETUNE_LEVEL


def test_embed_settings_come_back_from_a_signature():
    base = EmbedSettings(batch_size=7, device="cpu", precision="bf16")
    sig = signature(kind="cells", image_hash="i", labels_hash="l", stains=("protein",), backbone="random-tiny",
                    weights_hash="w", strategy="replicate", embedding="cls+mean", crop_size=48, input_size=32,
                    mask_background=False, device="cpu", precision="fp32")
    settings = EmbedSettings.from_signature(sig, base)
    assert settings == EmbedSettings(strategy="replicate", embedding="cls+mean", crop_size=48, input_size=32,
                                     mask_background=False, batch_size=7, device="cpu", precision="fp32")
    del sig["precision"]  # a bundle records no precision: the base's stays
    assert EmbedSettings.from_signature(sig, base).precision == "bf16"
    assert EmbedSettings.from_signature(sig).batch_size == EmbedSettings().batch_size


def test_one_stain_to_channel_lookup():
    stains = ("other", "nucleus", "protein", "other")
    assert channel_of("protein", stains) == 2 and channel_of("er", stains) is None
    assert channel_order(("protein", "other", "other", "nucleus"), stains) == (2, 0, 3, 1)
    assert channel_order(("protein",), stains) == (2,)  # extra channels are ignored
    assert channel_order(("er",), stains) is None
    assert channel_order(("other", "other", "other"), stains) is None  # each channel used once


def test_the_default_features_are_a_feature_choice_that_loads_offline():
    from napari_dinoloc.core.classic import feature_choices, load_features

    assert defaults.FEATURES in feature_choices()
    features = load_features(defaults.FEATURES, device="cpu")  # offline: no download, no retry
    assert features.name == defaults.FEATURES
