rule build_prompts:
    output:
        layout.prompts(OUT, "{generated_source}"),
    log:
        log_of("build_prompts"),
    benchmark:
        benchmark_of("build_prompts")
    conda:
        "../../envs/generate.yaml"
    params:
        prompts=prompt_settings,
        real=config.get("real", {}),
        seed=prompt_seed,
    script:
        "../scripts/build_prompts.py"


rule fit_generator:
    input:
        index=real_index,
    output:
        directory(layout.generator_dir(OUT, "{generator}")),
    log:
        log_of("fit_generator"),
    benchmark:
        benchmark_of("fit_generator")
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
        index=layout.shard_index(OUT, "{generated_source}", "{shard}"),
        counts=layout.shard_counts(OUT, "{generated_source}", "{shard}"),
    log:
        log_of("generate_shard"),
    benchmark:
        benchmark_of("generate_shard")
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
        images_root=layout.generated_root(OUT, "{generated_source}"),
    script:
        "../scripts/generate_shard.py"


rule gather_generated:
    input:
        indexes=shard_indexes,
        counts=shard_counts,
    output:
        index=layout.generated_index(OUT, "{generated_source}"),
        counts=layout.generated_counts(OUT, "{generated_source}"),
    log:
        log_of("gather_generated"),
    benchmark:
        benchmark_of("gather_generated")
    conda:
        "../../envs/generate.yaml"
    script:
        "../scripts/gather_generated.py"
