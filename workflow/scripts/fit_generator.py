"""Glue for rule fit_generator: see contam.fit_generator."""

from contam import config as contam_config
from contam import fit_generator, identity, layout, logs
from contam.devices import job_device
from contam.io import read_parquet

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0], sm.threads)
settings = sm.params.settings
execution = sm.config["execution"]
device = job_device(execution, sm.resources.get("gpu", 0))
index = read_parquet(sm.input.index)
train = index[index["split"] == "train"].sort_values("path", ignore_index=True)
generator = settings["generator"]
summary = fit_generator.fit(
    train,
    num_classes=contam_config.num_classes(settings),
    out_dir=sm.output[0],
    image_size=generator["image_size"],
    fit_config=generator["fit"],
    seed=generator["seed"],
    device=device,
    # Resumed after a kill, unless the settings or the real data changed.
    checkpoint=layout.fit_checkpoint(sm.output[0]),
    fingerprint=identity.run_fingerprint(settings, sm.input.index, []),
    checkpoint_every=execution["checkpoint_steps"],
)
log.info("generator fitted: %s", summary)
