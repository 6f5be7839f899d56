"""zoolens: look inside a zoo of pretrained vision models.

Everything below is imported on first use (see `zoolens._lazy`): `import zoolens` is light,
and `zoolens.load`, `zoolens.rosetta`, `zoolens.curate` ... load what they need."""

from ._lazy import lazy_exports
from .errors import (BackendError, InputError, NotFittedError, UnknownLayerError,
                     UnknownModelError, ZoolensError)

__version__ = "0.1.0"

_EXPORTS = {
    "load": ".zoo", "list_models": ".zoo", "Model": ".zoo",
    "extract": ".extraction", "open_store": ".store", "Store": ".store",
    "open_source": ".sources", "Sink": ".sinks", "Need": ".sinks", "Batch": ".sinks",
    "LocalBackend": ".backends", "RayBackend": ".backends",
    "rosetta": ".analyses.rosetta", "compare": ".analyses.similarity",
    "probe": ".analyses.probes", "layerstats": ".analyses.layerstats",
    "discover": ".analyses.discovery", "visualize": ".analyses.discovery",
    "ood": ".analyses.ood:", "curate": ".analyses.curate:",
    "knn_classify": ".analyses.probes", "zeroshot_classifier": ".analyses.probes",
    "zeroshot_scores": ".analyses.probes", "logme": ".analyses.probes",
    "cka": ".analyses.similarity:linear_cka", "unbiased_cka": ".analyses.similarity",
    "mutual_knn": ".analyses.similarity", "ncut": ".analyses.discovery",
    "maskcut": ".analyses.discovery",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [*_EXPORTS, "ZoolensError", "UnknownModelError", "UnknownLayerError", "InputError",
           "NotFittedError", "BackendError"]
