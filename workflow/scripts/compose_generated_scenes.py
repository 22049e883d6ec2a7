"""Glue for rule compose_generated_scenes: see contam.scenes."""

from contam import caption_data, logs, scenes
from contam.io import read_parquet, write_parquet

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0])
captioned = read_parquet(sm.input.captioned)
glyphs = read_parquet(sm.input.glyphs)
composed = caption_data.generated_twins(captioned[captioned["split"] == "train"], glyphs)
rendered = scenes.render_scenes(composed, sm.params.images, name=f"{sm.wildcards.generated_source} scenes")
log.info("%s: %d generated scenes, %d skipped (a glyph missing or unreadable)", sm.wildcards.generated_source, len(rendered), len(composed) - len(rendered))
write_parquet(rendered[["image_id", "path"]].reset_index(drop=True), sm.output[0])
