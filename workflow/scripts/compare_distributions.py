"""Glue for rule compare_distributions: see contam.analysis."""

import numpy as np

from contam import analysis, logs
from contam.io import write_json

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0])
settings = sm.params.settings
real, other = np.load(sm.input.real), np.load(sm.input.other)
result = analysis.compare(
    real["features"], real["labels"], other["features"], other["labels"],
    nearest_k=settings.get("nearest_k", 5), kid_subsets=settings.get("kid_subsets", 100),
    kid_subset_size=settings.get("kid_subset_size", 1000), seed=sm.params.seed,
)
result["source"] = sm.wildcards.source
result["feature_extractor"] = settings.get("feature_extractor", "classifier")
log.info("%s vs real: %s", sm.wildcards.source, result["whole"])
write_json(result, sm.output[0])
