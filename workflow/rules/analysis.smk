rule extract_features:
    input:
        index=feature_set_index,
        extractor=feature_extractor_weights,
    output:
        layout.features(OUT, "{feature_set}"),
    log:
        log_of("extract_features"),
    benchmark:
        benchmark_of("extract_features")
    conda:
        "../../envs/evaluate.yaml"
    threads: threads_of("evaluate")
    resources:
        mem_mb=mem_of("evaluate"),
        runtime=runtime_of("evaluate"),
        gpu=gpus_of("evaluate"),
    params:
        settings=feature_settings,
    script:
        "../scripts/extract_features.py"


rule compare_distributions:
    input:
        reference=layout.features(OUT, layout.REFERENCE_FEATURES),
        other=comparison_features,
    output:
        layout.comparison(OUT, "{comparison}"),
    log:
        log_of("compare_distributions"),
    benchmark:
        benchmark_of("compare_distributions")
    conda:
        "../../envs/evaluate.yaml"
    params:
        settings=comparison_settings,
    script:
        "../scripts/compare_distributions.py"
