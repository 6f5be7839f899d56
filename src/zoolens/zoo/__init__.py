"""The model zoo: spec strings -> `Model` (module, preprocessing, tappable layers)."""

from .model import Model, resolve_layers
from .registry import (AdapterResult, as_models, list_models, list_sources, load, parse_spec,
                       register_source, resolve_device)

__all__ = ["Model", "AdapterResult", "load", "as_models", "resolve_layers", "list_models",
           "list_sources", "parse_spec", "register_source", "resolve_device"]
