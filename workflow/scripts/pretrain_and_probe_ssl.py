"""Glue for rule pretrain_and_probe_ssl: see contam.ssl.pretrain and contam.ssl.linear_probe."""

from pathlib import Path

from contam import identity, logs, ssl
from contam.devices import job_device
from contam.evaluate import software_versions
from contam.io import read_parquet, write_json

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0], sm.threads)
settings = sm.params.settings
execution = sm.config["execution"]
device = job_device(execution, sm.resources.get("gpu", 0))
fingerprint = identity.run_fingerprint(settings, sm.input.manifest, list(sm.input.indexes))
summary = ssl.pretrain(
    read_parquet(sm.input.manifest),
    settings,
    settings["seed"],
    out_dir=str(Path(sm.output.encoder).parent),
    fingerprint=fingerprint,
    device=device,
    num_workers=execution["num_workers"],
)
log.info("pretrained: %s", summary)

# The probe learns the real training labels; validation is scored beside test.
real = read_parquet(sm.input.real)
train = real[real["split"] == "train"]
sets = {split: real[real["split"] == split] for split in ("test", "validation") if (real["split"] == split).any()}
options = dict(device=device, batch_size=execution["eval_batch_size"], num_workers=execution["num_workers"], C=sm.params.probe_C)
result = ssl.linear_probe(ssl.load_encoder(sm.output.encoder, settings, device), settings["image_size"], train, sets, sm.params.num_classes, settings["seed"], **options)
# The same probe on random features: how much of the score pretraining earned.
untrained = ssl.linear_probe(ssl.untrained_encoder(settings, settings["seed"], device), settings["image_size"], train, {"test": sets["test"]}, sm.params.num_classes, settings["seed"], **options)
result["untrained"] = untrained["sets"]["test"]
run = {"source": sm.wildcards.source, "ratio": sm.wildcards.ratio, "method": sm.wildcards.method, "seed": int(sm.wildcards.seed)}
log.info("linear probe: test top-1 %.3f (untrained encoder %.3f)", result["sets"]["test"]["top1"], result["untrained"]["top1"])
write_json({"run": run, "pretraining": summary, **result, "versions": software_versions()}, sm.output.metrics)
