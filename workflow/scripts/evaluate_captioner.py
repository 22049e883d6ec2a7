"""Glue for rule evaluate_captioner: see contam.captioning.evaluate_run."""

from pathlib import Path

from safetensors import safe_open

from contam import caption_metrics, captioning, evaluate, logs
from contam.devices import job_device
from contam.io import file_sha256, read_parquet, write_json

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0], sm.threads)
execution = sm.config["execution"]
device = job_device(execution, sm.resources.get("gpu", 0))
predictions, metrics = captioning.evaluate_run(
    Path(sm.input.weights).parent, sm.params.settings, sm.params.evaluation, read_parquet(sm.input.captioned), device, execution["eval_batch_size"]
)
with safe_open(sm.input.weights, "pt") as weights:
    fingerprint = weights.metadata()["fingerprint"]
caption_metrics.write_results(predictions, sm.output.predictions)
write_json(
    {
        "run": {**dict(sm.wildcards.items()), "seed": int(sm.wildcards.seed)},
        **metrics,
        "device": str(device),
        "fingerprint": fingerprint,
        "manifest_sha256": file_sha256(sm.input.manifest),
        "versions": evaluate.software_versions(),
    },
    sm.output.metrics,
)
