"""Glue for rule build_detector_data: see contam.remedies.detector_data."""

from contam import logs, remedies
from contam.io import read_parquet, write_parquet

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0])
settings = sm.params.settings
real = read_parquet(sm.input.real)
generated = {path.rsplit("/", 1)[-1].removesuffix(".parquet"): read_parquet(path) for path in sm.input.generated}
labelled = remedies.detector_data(real, settings["real_split"], settings["real_per_class"], generated, settings["split_fractions"], sm.params.seed)
remedies.check_disjoint(labelled, [read_parquet(p) for p in sm.input.manifests], real.loc[real["split"] == "test", "path"])
log.info("detector data: %s", labelled.groupby(["split", "generated"]).size().to_dict())
write_parquet(labelled, sm.output[0])
