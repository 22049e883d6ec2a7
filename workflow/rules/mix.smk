rule mix:
    input:
        real=real_index,
        contaminant=contaminant_index,
    output:
        f"{OUT}/manifests/{{source}}/ratio-{{ratio}}.parquet",
    log:
        f"{LOGS}/mix/{{source}}/ratio-{{ratio}}.log",
    conda:
        "../../envs/train.yaml"
    params:
        settings=mix_settings,
    script:
        "../scripts/mix.py"
