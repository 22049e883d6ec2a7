rule mix:
    input:
        real=real_index,
        contaminant=contaminant_index,
    output:
        layout.manifest(OUT, "{source}", "{ratio}"),
    log:
        log_of("mix"),
    benchmark:
        benchmark_of("mix")
    conda:
        "../../envs/train.yaml"
    params:
        settings=mix_settings,
    script:
        "../scripts/mix.py"
