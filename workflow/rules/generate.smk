rule fit_generator:
    input:
        index=real_index,
    output:
        directory(f"{OUT}/generators/{{generator}}"),
    log:
        f"{LOGS}/fit_generator/{{generator}}.log",
    benchmark:
        f"{BENCH}/fit_generator/{{generator}}.tsv"
    # The generator is the critical path of the embedded study: start it first.
    priority: 50
    conda:
        "../../envs/generate.yaml"
    threads: threads_of("fit_generator")
    resources:
        mem_mb=mem_of("fit_generator"),
        runtime=runtime_of("fit_generator"),
        gpu=gpus_of("fit_generator"),
    params:
        settings=embedded_settings,
    script:
        "../scripts/fit_generator.py"


rule generate_shard:
    input:
        prompts=prompts_of,
        model=generator_model,
    output:
        index=f"{OUT}/generated/{{generated_source}}/shard-{{shard}}.parquet",
        counts=f"{OUT}/generated/{{generated_source}}/shard-{{shard}}.json",
    log:
        f"{LOGS}/generate_shard/{{generated_source}}/shard-{{shard}}.log",
    benchmark:
        f"{BENCH}/generate_shard/{{generated_source}}/shard-{{shard}}.tsv"
    priority: 40
    conda:
        "../../envs/generate.yaml"
    threads: threads_of("generate_shard")
    resources:
        mem_mb=mem_of("generate_shard"),
        runtime=runtime_of("generate_shard"),
        gpu=gpus_of("generate_shard"),
    params:
        settings=generation_settings,
        shards=lambda wildcards: shard_count(wildcards.generated_source),
        images_root=f"{OUT}/generated/{{generated_source}}",
    script:
        "../scripts/generate_shard.py"


rule gather_generated:
    input:
        indexes=shard_indexes,
        counts=shard_counts,
    output:
        index=f"{OUT}/generated/{{generated_source}}.parquet",
        counts=f"{OUT}/generated/{{generated_source}}.json",
    log:
        f"{LOGS}/gather_generated/{{generated_source}}.log",
    conda:
        "../../envs/generate.yaml"
    script:
        "../scripts/gather_generated.py"
