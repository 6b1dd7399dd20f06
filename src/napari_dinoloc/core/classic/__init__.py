"""Classical per-cell features (intensity, radial distribution, texture, granularity, shape): the
baseline that deep features must beat, and a block that can be joined to them."""

from .backbone import CLASSIC, ClassicBackbone, FeatureScaler, feature_choices, is_classic_name, load_features
from .extractor import ClassicFeatures, combine
from .features import classic_features, feature_names

__all__ = ["CLASSIC", "ClassicBackbone", "FeatureScaler", "feature_choices", "is_classic_name", "load_features",
           "ClassicFeatures", "classic_features", "combine", "feature_names"]
