"""Glue for rule fit_generator: see contam.fit_generator."""

from contam import config as contam_config
from contam import fit_generator, logs
from contam.devices import pick_device
from contam.io import read_parquet

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0], sm.threads)
settings = sm.params.settings
index = read_parquet(sm.input.index)
train = index[index["split"] == "train"].sort_values("path", ignore_index=True)
generator = settings["generator"]
summary = fit_generator.fit(
    train,
    num_classes=contam_config.num_classes(sm.config),
    out_dir=sm.output[0],
    image_size=generator["image_size"],
    fit_config=generator["fit"],
    seed=generator.get("seed", 0),
    device=pick_device(sm.config.get("execution", {}).get("device", "auto")),
)
log.info("generator fitted: %s", summary)
