"""Glue for rule score_meteor: see contam.caption_metrics.meteor_scores."""

import json

from contam import caption_data, caption_metrics, logs
from contam.io import read_parquet, write_json

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0])
refs = caption_data.references(read_parquet(sm.input.captioned), "test")
runs = {}
for path in sm.input.predictions:
    with open(path) as handle:
        runs[str(path)] = {int(r["image_id"]): r["caption"] for r in json.load(handle)}
tokenizer = caption_metrics.choose_tokenizer(sm.params.tokenizer)
java = caption_metrics.java_available()
if sm.params.enabled and java:
    scores, reason = caption_metrics.meteor_scores(runs, refs, tokenizer), None
else:
    scores = dict.fromkeys(runs)
    reason = "captioning.metrics.meteor is false" if not sm.params.enabled else "Java was not found (METEOR runs in Java)"
    log.warning("METEOR not computed: %s", reason)
write_json({"tokenizer": tokenizer, "not_computed": reason, "runs": scores}, sm.output[0])
