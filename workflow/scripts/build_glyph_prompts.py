"""Glue for rule build_glyph_prompts: see contam.scenes.glyph_prompts."""

from contam import logs, scenes
from contam.io import read_parquet, write_parquet

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0])
captioned = read_parquet(sm.input.captioned)
prompts = scenes.glyph_prompts(captioned[captioned["split"] == "train"], sm.params.seed)
log.info("%s: %d glyphs to generate", sm.wildcards.generated_source, len(prompts))
write_parquet(prompts, sm.output[0])
