"""Rosetta neurons (Dravid et al., ICCV 2023): units of different models that encode the same thing.

- `units`: unit identity (`UnitIndex`, ids `<model>/<layer>:<channel>`);
- `buddies`: best buddies in a correlation table or top-K partners, multi-model sets;
- `profiles`: concepts from the sets' activation profiles;
- `result`: `RosettaResult`, as JSON;
- `mining`: the model-driving part, `rosetta(models, images)`, on `zoolens.stats.CrossCorrelation`
  (streaming, exactly mergeable Pearson correlations) fed by the planner.
"""

from .buddies import MODES, best_buddies, label_buddies, rosetta_sets
from .mining import (DEFAULT_MAX_MEMORY, CorrelationSink, MapsSink, TopImages, default_resolution,
                   rosetta)
from .profiles import cluster_sets, set_profiles
from .result import RosettaResult
from .units import UnitIndex

__all__ = ["rosetta", "RosettaResult", "UnitIndex", "best_buddies", "label_buddies",
           "rosetta_sets", "set_profiles", "cluster_sets", "CorrelationSink", "MapsSink",
           "TopImages", "MODES", "DEFAULT_MAX_MEMORY", "default_resolution"]
