"""Glue for rule build_scenes: see contam.scenes."""

from contam import layout, logs, scenes
from contam.io import read_parquet, write_json, write_parquet

sm = snakemake  # noqa: F821 (provided by Snakemake)
log = logs.setup(sm.log[0])
real = read_parquet(sm.input.real)
table = scenes.compose_scenes(real, sm.params.scenes, sm.params.seed)
captioned = scenes.render_scenes(table, f"{sm.params.images_root}/{layout.BASELINE_SOURCE}", name="real scenes")
quality = {"scenes": len(table), "indexed": len(captioned), "skipped": int(captioned.attrs.get("skipped", 0))}
train = captioned[captioned["split"] == "train"]
for (source, split), pool_path in zip(sm.params.controls.items(), sm.output.pools):
    # A control twin: the same scene from held-out real glyphs of the same digits.
    twins = scenes.twin_glyphs(train, real[real["split"] == split], sm.params.seed, tag=source)
    composed = train.drop(columns=["glyph_a", "glyph_b", "path"]).merge(twins, on="image_id")
    rendered = scenes.render_scenes(composed, f"{sm.params.images_root}/{source}", name=f"{source} scenes")
    quality[f"{source}_skipped"] = int(rendered.attrs.get("skipped", 0))
    write_parquet(rendered[["image_id", "path"]], pool_path)
log.info("scenes: %s", quality)
write_json(quality, sm.output.quality)
write_parquet(captioned.reset_index(drop=True), sm.output.captioned)
