"""Glue for rule fit_detector: see contam.remedies.fit_and_score_detector and contam.detect."""

import pandas as pd

from contam import logs, remedies
from contam.devices import job_device
from contam.io import read_parquet, write_json, write_parquet

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0], sm.threads)
settings = sm.params.settings
execution = sm.config["execution"]
device = job_device(execution, sm.resources.get("gpu", 0))
extractor = None
if settings["kind"] == "probe":
    from contam.evaluate import load_classifier

    model = load_classifier(sm.input.extractor, settings["extractor"], settings["num_classes"], device)
    extractor = (model, settings["extractor"]["image_size"])
to_score = remedies.scored_paths([read_parquet(p, columns=["path"]) for p in sm.input.manifests])
detector, metrics, scores = remedies.fit_and_score_detector(
    settings["kind"],
    read_parquet(sm.input.data),
    to_score,
    {**settings, "eval_batch_size": execution["eval_batch_size"], "num_workers": execution["num_workers"]},
    settings["fpr_budgets"],
    settings["bootstrap"],
    settings["seed"],
    device=device,
    extractor=extractor,
)
log.info("%s: test AUROC %.3f, thresholds %s; scored %d images", settings["kind"], metrics["auroc"]["estimate"], metrics["thresholds"], len(scores))
detector.save(sm.output.model)
write_parquet(pd.DataFrame(scores), sm.output.scores)
write_json({**metrics, "settings": settings}, sm.output.metrics)
