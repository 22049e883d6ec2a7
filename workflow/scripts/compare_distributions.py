"""Glue for rule compare_distributions: see contam.analysis."""

from contam import analysis, logs

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0])
settings = sm.params.settings
reference = analysis.read_features(sm.input.reference)
other = analysis.read_features(sm.input.other) if sm.input.other else None
result = analysis.compare_with_settings(reference, other, settings)
result.update(source=sm.wildcards.comparison, feature_extractor=settings["feature_extractor"], reference_split=settings["reference_split"])
log.info("%s against the reference: %s", sm.wildcards.comparison, result["whole"])
analysis.write_comparison(result, sm.output[0])
