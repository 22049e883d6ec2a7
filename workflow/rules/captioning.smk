# The captioning study (task: captioning): a captioner trained on each mix of
# captioned images, where a share of the training images' pixels are replaced by
# generated (or control) twins with the same captions, scored on real test images.

if CAPTIONING and not COCO_CAPTIONS:

    localrules:
        build_glyph_prompts,

    # The embedded world: captioned scenes of two coloured digit glyphs, each split
    # from its own glyphs; control twins from the held-out control glyphs.
    rule build_scenes:
        input:
            real=real_index,
        output:
            captioned=layout.captioned_index(OUT),
            quality=layout.captioned_quality(OUT),
            pools=control_twin_pools(),
        log:
            log_of("build_scenes"),
        benchmark:
            benchmark_of("build_scenes")
        conda:
            "../../envs/train.yaml"
        params:
            scenes=scene_counts(),
            controls={s: config["sources"][s]["real_split"] for s in CONTROLS},
            seed=config["seed"],
            images_root=f"{layout.captioning_dir(OUT)}/scenes",
        script:
            "../scripts/build_scenes.py"

    rule build_glyph_prompts:
        input:
            captioned=captioned_index,
        output:
            layout.glyph_prompts(OUT, "{generated_source}"),
        log:
            log_of("build_glyph_prompts"),
        benchmark:
            benchmark_of("build_glyph_prompts")
        conda:
            "../../envs/generate.yaml"
        params:
            seed=prompt_seed,
        script:
            "../scripts/build_glyph_prompts.py"

    # A generated twin is its scene drawn again, with glyphs the generator sampled
    # for the same digits: same captions, same composition, generated pixels.
    rule compose_generated_scenes:
        input:
            captioned=captioned_index,
            prompts=prompts_of,
            glyphs=lambda wildcards: layout.generated_index(
                OUT, wildcards.generated_source
            ),
        output:
            layout.twin_pool(OUT, "{generated_source}"),
        log:
            log_of("compose_generated_scenes"),
        benchmark:
            benchmark_of("compose_generated_scenes")
        conda:
            "../../envs/generate.yaml"
        params:
            images=lambda wildcards: layout.scene_images(
                OUT, wildcards.generated_source
            ),
        script:
            "../scripts/compose_generated_scenes.py"


if COCO_CAPTIONS:

    localrules:
        import_generated_pool,

    # COCO: the captions files read with pycocotools, split by the Karpathy-style file.
    rule index_coco_captions:
        output:
            captioned=layout.captioned_index(OUT),
            quality=layout.captioned_quality(OUT),
        log:
            log_of("index_coco_captions"),
        benchmark:
            benchmark_of("index_coco_captions")
        conda:
            "../../envs/train.yaml"
        threads: threads_of("default")
        resources:
            mem_mb=mem_of("default"),
            runtime=runtime_of("default"),
        params:
            real=config["real"],
        script:
            "../scripts/index_coco_captions.py"

    # SD-COCO's images come from the generation experiment (config/coco.yaml).
    rule import_generated_pool:
        input:
            captioned=captioned_index,
            generated=imported_index,
        output:
            layout.twin_pool(OUT, "{generated_source}"),
        log:
            log_of("import_generated_pool"),
        benchmark:
            benchmark_of("import_generated_pool")
        conda:
            "../../envs/train.yaml"
        params:
            index=lambda wildcards: config["sources"][wildcards.generated_source][
                "index"
            ],
        script:
            "../scripts/import_generated_pool.py"


rule mix_captions:
    input:
        captioned=captioned_index,
        pool=twin_pool_of,
    output:
        layout.caption_manifest(OUT, "{source}", "{ratio}"),
    log:
        log_of("mix_captions"),
    benchmark:
        benchmark_of("mix_captions")
    conda:
        "../../envs/train.yaml"
    params:
        settings=caption_mix_settings,
    script:
        "../scripts/mix_captions.py"


rule train_captioner:
    input:
        manifest=caption_manifest_of,
        captioned=captioned_index,
    output:
        weights=layout.caption_weights(
            OUT, "{source}", "{ratio}", "{captioner}", "{seed}"
        ),
    log:
        log_of("train_captioner"),
    benchmark:
        benchmark_of("train_captioner")
    conda:
        "../../envs/train.yaml"
    threads: threads_of("train_captioner")
    resources:
        mem_mb=mem_of("train_captioner"),
        runtime=runtime_of("train_captioner"),
        gpu=gpus_of("train_captioner"),
    params:
        settings=captioner_run_settings,
    script:
        "../scripts/train_captioner.py"


rule evaluate_captioner:
    input:
        weights=rules.train_captioner.output.weights,
        manifest=caption_manifest_of,
        captioned=captioned_index,
    output:
        predictions=layout.caption_predictions(
            OUT, "{source}", "{ratio}", "{captioner}", "{seed}"
        ),
        metrics=layout.caption_metrics(
            OUT, "{source}", "{ratio}", "{captioner}", "{seed}"
        ),
    log:
        log_of("evaluate_captioner"),
    benchmark:
        benchmark_of("evaluate_captioner")
    conda:
        "../../envs/evaluate.yaml"
    threads: threads_of("evaluate_captioner")
    resources:
        mem_mb=mem_of("evaluate_captioner"),
        runtime=runtime_of("evaluate_captioner"),
        gpu=gpus_of("evaluate_captioner"),
    params:
        settings=captioner_run_settings,
        evaluation=caption_evaluation_settings,
    script:
        "../scripts/evaluate_captioner.py"


# METEOR for every run in one job: its Java start-up (~17 s) loads a paraphrase
# table that would otherwise be loaded once per run.
rule score_meteor:
    input:
        predictions=caption_predictions_all,
        captioned=captioned_index,
    output:
        layout.meteor_scores(OUT),
    log:
        log_of("score_meteor"),
    benchmark:
        benchmark_of("score_meteor")
    conda:
        "../../envs/evaluate.yaml"
    params:
        enabled=config.get("captioning", {}).get("metrics", {}).get("meteor", True),
        tokenizer=config.get("captioning", {}).get("metrics", {}).get("tokenizer"),
    script:
        "../scripts/score_meteor.py"


rule report_captioning:
    input:
        unpack(captioning_report_inputs),
    output:
        html=report(
            f"{REPORT}/captioning.html",
            caption="../report/captioning.rst",
            category="Report",
        ),
        summary=report(
            f"{REPORT}/captioning_summary.csv",
            caption="../report/captioning_summary.rst",
            category="Report",
        ),
    log:
        log_of("report_captioning"),
    benchmark:
        benchmark_of("report_captioning")
    conda:
        "../../envs/report.yaml"
    params:
        ratios=config.get("mixing", {}).get("ratios", []),
        arms=SOURCES,
        origins=report_origins(),
        settings=config.get("captioning", {}),
        seed=config["seed"],
        experiment=EXP,
        benchmark_root=BENCH,
        slots=not COCO_CAPTIONS,
    script:
        "../scripts/report_captioning.py"
