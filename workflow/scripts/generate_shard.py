"""Glue for rule generate_shard: see contam.generate."""

from pathlib import Path

from contam import generate, logs
from contam.devices import pick_device
from contam.io import read_parquet, write_json, write_parquet

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0], sm.threads)
settings = sm.params.settings
execution = sm.config.get("execution", {})
device = pick_device(execution.get("device", "auto"))
generator = settings["generator"]
# Images live beside the shards, in a folder named by the settings that change
# pixels, so a finished image is reused only by identical settings.
settings_id = generate.settings_id(settings)
images_dir = Path(sm.params.images_root) / f"images-{settings_id}"
if generator["kind"] == "embedded":
    sampler = generate.EmbeddedSampler(sm.input.model, generator["sample"], device)
else:
    sampler = generate.DiffusersSampler(
        generator,
        device,
        attention=execution.get("generate_attention", "sdpa"),
        compile_unet=execution.get("generate_compile", False),
    )
rows = generate.shard_rows(
    read_parquet(sm.input.prompts), sm.params.shards, int(sm.wildcards.shard)
)
index, counts = generate.generate_shard(
    rows,
    images_dir,
    sampler,
    batch_size=execution.get("generate_batch_size", 64),
    generator_name=settings["generator_name"],
    settings_id=settings_id,
    options=generate.ImageOptions.of(generator),
    unsafe=generate.UnsafePolicy.of(generator),
    writer_threads=max(sm.threads, 2),
)
log.info("shard %s: %s", sm.wildcards.shard, {k: v for k, v in counts.items() if k != "flagged_rows"})
write_json({**counts, "settings": settings, "settings_id": settings_id}, sm.output.counts)
write_parquet(index, sm.output.index)
