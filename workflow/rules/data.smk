rule index_real:
    output:
        index=f"{OUT}/real/index.parquet",
        quality=f"{OUT}/real/quality.json",
    log:
        f"{LOGS}/index_real.log",
    benchmark:
        f"{BENCH}/index_real.tsv"
    conda:
        "../../envs/train.yaml"
    threads: threads_of("default")
    resources:
        mem_mb=mem_of("default"),
        runtime=runtime_of("default"),
    params:
        real=config.get("real", {}),
        seed=config["seed"],
        images=f"{OUT}/real/images",
    script:
        "../scripts/index_real.py"


rule index_control:
    output:
        index=f"{OUT}/control/{{control_source}}/index.parquet",
        quality=f"{OUT}/control/{{control_source}}/quality.json",
    log:
        f"{LOGS}/index_control/{{control_source}}.log",
    benchmark:
        f"{BENCH}/index_control/{{control_source}}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: threads_of("default")
    resources:
        mem_mb=mem_of("default"),
        runtime=runtime_of("default"),
    params:
        root=lambda wildcards: config["sources"][wildcards.control_source]["root"],
        real=config.get("real", {}),
    script:
        "../scripts/index_folder.py"


rule index_ood:
    output:
        index=f"{OUT}/ood/{{ood_set}}/index.parquet",
        quality=f"{OUT}/ood/{{ood_set}}/quality.json",
    log:
        f"{LOGS}/index_ood/{{ood_set}}.log",
    benchmark:
        f"{BENCH}/index_ood/{{ood_set}}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: threads_of("default")
    resources:
        mem_mb=mem_of("default"),
        runtime=runtime_of("default"),
    params:
        root=lambda wildcards: config["evaluation"]["ood_sets"][wildcards.ood_set][
            "root"
        ],
        real=config.get("real", {}),
    script:
        "../scripts/index_folder.py"


rule build_prompts:
    output:
        f"{OUT}/prompts/{{generated_source}}.parquet",
    log:
        f"{LOGS}/build_prompts/{{generated_source}}.log",
    conda:
        "../../envs/generate.yaml"
    params:
        prompts=lambda wildcards: config["sources"][wildcards.generated_source].get(
            "prompts", {}
        ),
        real=config.get("real", {}),
        seed=lambda wildcards: config["generators"][
            generator_of(wildcards.generated_source)
        ].get("seed", 0),
    script:
        "../scripts/build_prompts.py"
