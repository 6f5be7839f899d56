"""The analyses, one package each. Every one follows the same split: functions on arrays (the
method, testable against a reference), sinks that accumulate it batch by batch
(`zoolens.sinks.Sink`), and one function that builds its sinks, runs a pass through the planner
(`zoolens.plan.run`) and writes `<analysis>.json`.

- `rosetta`: units shared across models (Rosetta neurons);
- `similarity`: layer x layer CKA and mutual k-NN between models;
- `probes`: frozen-feature evaluation (k-NN, linear, zero-shot, LogME);
- `discovery`: objects without labels (MaskCut), PCA colours, attention maps;
- `layerstats`: per-unit activation statistics (the worked example of README's "Extending").
- `curate`: near-duplicates, balanced sampling, retrieval, prototypes, dataset comparison.
"""
