rule extract_features:
    input:
        index=feature_set_index,
        extractor=feature_extractor_weights,
    output:
        f"{OUT}/analysis/features/{{feature_set}}.npz",
    log:
        f"{LOGS}/extract_features/{{feature_set}}.log",
    benchmark:
        f"{BENCH}/extract_features/{{feature_set}}.tsv"
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
        real=f"{OUT}/analysis/features/{BASELINE}.npz",
        other=f"{OUT}/analysis/features/{{source}}.npz",
    output:
        f"{OUT}/analysis/{{source}}.json",
    log:
        f"{LOGS}/compare_distributions/{{source}}.log",
    benchmark:
        f"{BENCH}/compare_distributions/{{source}}.tsv"
    conda:
        "../../envs/evaluate.yaml"
    params:
        settings=config.get("analysis", {}),
        seed=config["seed"],
    script:
        "../scripts/compare_distributions.py"
