"""The model zoo: spec strings -> `Model` (module, preprocessing, tappable layers)."""

from .model import Model
from .registry import AdapterResult, list_models, list_sources, load, parse_spec, register_source

__all__ = ["Model", "AdapterResult", "load", "list_models", "list_sources", "parse_spec",
           "register_source"]
