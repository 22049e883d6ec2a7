rule train:
    input:
        manifest=manifest_of,
    output:
        weights=f"{OUT}/runs/{{source}}/ratio-{{ratio}}/{{model}}/seed-{{seed}}/model.safetensors",
        history=f"{OUT}/runs/{{source}}/ratio-{{ratio}}/{{model}}/seed-{{seed}}/train_log.csv",
    log:
        f"{LOGS}/train/{{source}}/ratio-{{ratio}}/{{model}}/seed-{{seed}}.log",
    benchmark:
        f"{BENCH}/train/{{source}}/ratio-{{ratio}}/{{model}}/seed-{{seed}}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: threads_of("train")
    resources:
        mem_mb=mem_of("train"),
        runtime=runtime_of("train"),
        gpu=gpus_of("train"),
    params:
        settings=run_settings,
    # With resources.gpu > 1 the script starts one process per GPU through
    # `accelerate launch` (contam.train_cli); otherwise it trains in-process.
    script:
        "../scripts/train.py"


rule evaluate:
    input:
        weights=rules.train.output.weights,
        manifest=manifest_of,
        real=real_index,
        ood=ood_indexes,
    output:
        f"{OUT}/runs/{{source}}/ratio-{{ratio}}/{{model}}/seed-{{seed}}/metrics.json",
    log:
        f"{LOGS}/evaluate/{{source}}/ratio-{{ratio}}/{{model}}/seed-{{seed}}.log",
    benchmark:
        f"{BENCH}/evaluate/{{source}}/ratio-{{ratio}}/{{model}}/seed-{{seed}}.tsv"
    conda:
        "../../envs/evaluate.yaml"
    threads: threads_of("evaluate")
    resources:
        mem_mb=mem_of("evaluate"),
        runtime=runtime_of("evaluate"),
        gpu=gpus_of("evaluate"),
    params:
        settings=run_settings,
        crop_ratio=config.get("evaluation", {}).get("crop_ratio", 0.875),
        ood_sets=sorted(config.get("evaluation", {}).get("ood_sets", {})),
    script:
        "../scripts/evaluate.py"
