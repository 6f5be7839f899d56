"""The built-in demo zoo: three small models trained on `synthetic:scenes` (see `zoo.py`)."""

from .zoo import DEMO_ZOO, classifier, generator, ssl_vit

__all__ = ["DEMO_ZOO", "classifier", "ssl_vit", "generator"]
