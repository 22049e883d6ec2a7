rule index_real:
    output:
        index=layout.real_index(OUT),
        quality=layout.real_quality(OUT),
    log:
        log_of("index_real"),
    benchmark:
        benchmark_of("index_real")
    conda:
        "../../envs/train.yaml"
    threads: threads_of("default")
    resources:
        mem_mb=mem_of("default"),
        runtime=runtime_of("default"),
    params:
        real=config.get("real", {}),
        seed=config["seed"],
        images=layout.real_images(OUT),
    script:
        "../scripts/index_real.py"


rule index_control:
    output:
        index=layout.control_index(OUT, "{control_source}"),
        quality=layout.control_quality(OUT, "{control_source}"),
    log:
        log_of("index_control"),
    benchmark:
        benchmark_of("index_control")
    conda:
        "../../envs/train.yaml"
    threads: threads_of("default")
    resources:
        mem_mb=mem_of("default"),
        runtime=runtime_of("default"),
    params:
        root=control_root,
        file_lists=control_file_lists,
        real=config.get("real", {}),
    script:
        "../scripts/index_folder.py"


rule index_ood:
    output:
        index=layout.ood_index(OUT, "{ood_set}"),
        quality=layout.ood_quality(OUT, "{ood_set}"),
    log:
        log_of("index_ood"),
    benchmark:
        benchmark_of("index_ood")
    conda:
        "../../envs/train.yaml"
    threads: threads_of("default")
    resources:
        mem_mb=mem_of("default"),
        runtime=runtime_of("default"),
    params:
        root=ood_root,
        real=config.get("real", {}),
    script:
        "../scripts/index_folder.py"
