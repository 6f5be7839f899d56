"""zoolens: look inside a zoo of pretrained vision models."""

from .analyses import curate, ood
from .analyses.discovery import discover, maskcut, ncut, visualize
from .analyses.probes import knn_classify, logme, probe, zeroshot_classifier, zeroshot_scores
from .analyses.rosetta import rosetta
from .analyses.layerstats import layerstats
from .analyses.similarity import compare
from .analyses.similarity import linear_cka as cka
from .analyses.similarity import mutual_knn, unbiased_cka
from .backends import LocalBackend, RayBackend
from .errors import (BackendError, InputError, NotFittedError, UnknownLayerError,
                     UnknownModelError, ZoolensError)
from .extract import extract
from .sources import open_source
from .sinks import Batch, Need, Sink
from .store import Store, open_store
from .zoo import Model, list_models, load

__version__ = "0.1.0"
__all__ = ["load", "list_models", "Model", "extract", "open_store", "Store", "open_source",
           "rosetta", "compare", "probe", "ood", "curate", "layerstats", "discover",
           "visualize",
           "knn_classify", "zeroshot_classifier", "zeroshot_scores", "cka", "unbiased_cka",
           "mutual_knn", "logme", "ncut", "maskcut", "Sink", "Need", "Batch",
           "ZoolensError", "UnknownModelError", "UnknownLayerError", "InputError",
           "NotFittedError", "BackendError", "LocalBackend", "RayBackend"]
