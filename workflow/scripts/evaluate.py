"""Glue for rule evaluate: see contam.evaluate."""

from safetensors import safe_open

from contam import evaluate, logs, prepare
from contam.devices import job_device
from contam.io import file_sha256, read_parquet

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0], sm.threads)
settings = sm.params.settings
execution = sm.config["execution"]
device = job_device(execution, sm.resources.get("gpu", 0))
model = evaluate.load_classifier(sm.input.weights, settings["model"], settings["num_classes"], device)
real = read_parquet(sm.input.real)
# Validation is evaluated beside test: settings are chosen on it, never on test.
sets = {split: real[real["split"] == split] for split in ("test", "validation") if (real["split"] == split).any()}
sets.update({name: read_parquet(path) for name, path in zip(sm.params.ood_sets, sm.input.ood)})
if sm.input.cached:
    # prepare.enabled: every evaluation set is read from its cached copies.
    records = [read_parquet(path) for path in sm.input.cached]
    sets = {name: prepare.cached_paths(index, records) for name, index in sets.items()}
    log.info("reading the cached copies (prepare.enabled)")
results = evaluate.evaluate_sets(
    model, settings["model"], sets, settings["num_classes"], sm.params.crop_ratio, device,
    execution["eval_batch_size"], execution["num_workers"], restrict=set(sm.params.ood_sets),
    decode=execution["decode"],
)
with safe_open(sm.input.weights, "pt") as weights:
    fingerprint = weights.metadata()["fingerprint"]
record = evaluate.metrics_record(
    run={**dict(sm.wildcards.items()), "seed": int(sm.wildcards.seed)},
    processes=settings["processes"],
    device=str(device),
    results=results,
    fingerprint=fingerprint,
    manifest_sha256=file_sha256(sm.input.manifest),
    versions=evaluate.software_versions(),
)
evaluate.write_metrics(record, sm.output[0])
