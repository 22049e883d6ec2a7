rule train:
    input:
        manifest=manifest_of,
        indexes=manifest_indexes,
        cached=train_cached_records,
    output:
        weights=layout.weights(OUT, "{source}", "{ratio}", "{model}", "{seed}"),
        history=layout.train_log(OUT, "{source}", "{ratio}", "{model}", "{seed}"),
    log:
        log_of("train"),
    benchmark:
        benchmark_of("train")
    conda:
        "../../envs/train.yaml"
    threads: threads_of("train")
    resources:
        mem_mb=mem_of("train"),
        runtime=runtime_of("train"),
        gpu=gpus_of("train"),
    params:
        settings=run_settings,
    # With settings.processes > 1 (resources.train.gpu > 1) the script starts one
    # process per GPU through `accelerate launch` (contam.train_cli).
    script:
        "../scripts/train.py"


rule evaluate:
    input:
        weights=rules.train.output.weights,
        manifest=manifest_of,
        real=real_index,
        ood=ood_indexes,
        cached=evaluate_cached_records,
    output:
        layout.metrics(OUT, "{source}", "{ratio}", "{model}", "{seed}"),
    log:
        log_of("evaluate"),
    benchmark:
        benchmark_of("evaluate")
    conda:
        "../../envs/evaluate.yaml"
    threads: threads_of("evaluate")
    resources:
        mem_mb=mem_of("evaluate"),
        runtime=runtime_of("evaluate"),
        gpu=gpus_of("evaluate"),
    params:
        settings=run_settings,
        crop_ratio=config["evaluation"]["crop_ratio"],
        ood_sets=OOD_SETS,
    script:
        "../scripts/evaluate.py"
