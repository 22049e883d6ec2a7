# The generative study (task: generative): a generative model per mix and per
# generation of the self-consuming loop, each scored against the reference split.


rule build_loop_manifest:
    input:
        unpack(loop_manifest_inputs),
    output:
        layout.loop_manifest(OUT, "{regime}", "{generation}", "{seed}"),
    log:
        log_of("build_loop_manifest"),
    benchmark:
        benchmark_of("build_loop_manifest")
    conda:
        "../../envs/train.yaml"
    params:
        settings=loop_settings,
    script:
        "../scripts/build_loop_manifest.py"


# One job fits a unit's model, draws its samples and scores them: each job pays
# ~10 s of imports (diffusers, timm) on the embedded study's machine, so a
# separate scoring job per unit cost a quarter of the study. The finished fit's
# checkpoint is kept, so a rerun for new scoring settings does not refit.
rule fit_and_score_generative_model:
    input:
        manifest=generative_manifest,
        indexes=generative_manifest_indexes,
        init=generative_init,
        reference=layout.features(OUT, layout.REFERENCE_FEATURES),
        judge=feature_extractor_weights,
    output:
        model=directory(layout.generative_model(OUT, "{track}", "{level}", "{seed}")),
        samples=layout.generative_samples(OUT, "{track}", "{level}", "{seed}"),
        counts=layout.generative_sample_counts(OUT, "{track}", "{level}", "{seed}"),
        metrics=layout.generative_metrics(OUT, "{track}", "{level}", "{seed}"),
    log:
        log_of("fit_and_score_generative_model"),
    benchmark:
        benchmark_of("fit_and_score_generative_model")
    conda:
        "../../envs/generate.yaml"
    threads: threads_of("fit_and_score_generative_model")
    resources:
        mem_mb=mem_of("fit_and_score_generative_model"),
        runtime=runtime_of("fit_and_score_generative_model"),
        gpu=gpus_of("fit_and_score_generative_model"),
    params:
        settings=generative_unit_settings,
        score=generative_score_settings,
        unit=generative_unit_block,
    script:
        "../scripts/fit_and_score_generative_model.py"


rule score_reference_floor:
    input:
        reference=layout.features(OUT, layout.REFERENCE_FEATURES),
        judge=feature_extractor_weights,
    output:
        layout.generative_floor(OUT),
    log:
        log_of("score_reference_floor"),
    benchmark:
        benchmark_of("score_reference_floor")
    conda:
        "../../envs/evaluate.yaml"
    params:
        settings=generative_score_settings,
    script:
        "../scripts/score_reference_floor.py"


rule report_generative:
    input:
        unpack(generative_report_inputs),
    output:
        html=report(
            f"{REPORT}/generative.html",
            caption="../report/generative.rst",
            category="Report",
        ),
        summary=report(
            f"{REPORT}/generative_summary.csv",
            caption="../report/generative_summary.rst",
            category="Report",
        ),
    log:
        log_of("report_generative"),
    benchmark:
        benchmark_of("report_generative")
    conda:
        "../../envs/report.yaml"
    params:
        regimes=LOOP_REGIMES,
        ratios=config.get("mixing", {}).get("ratios", []),
        arms=SOURCES,
        origins=report_origins(),
        sample_indexes=generative_sample_indexes,
        settings=config.get("report", {}),
        seed=config["seed"],
        experiment=EXP,
        benchmark_root=BENCH,
    script:
        "../scripts/report_generative.py"
