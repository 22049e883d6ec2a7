# Remedies, measured (remedies.enabled): detect generated images and drop them
# before training, against an oracle that drops exactly the generated rows; and
# self-supervised pretraining against supervised training on the same mixes.
# See contam.remedies, contam.detect and contam.ssl.


rule build_detector_prompts:
    input:
        source_prompts=prompts_of,
    output:
        layout.detector_prompts(OUT, "{generated_source}"),
    log:
        log_of("build_detector_prompts"),
    benchmark:
        benchmark_of("build_detector_prompts")
    conda:
        "../../envs/generate.yaml"
    params:
        prompts=detector_prompt_settings,
        real=config.get("real", {}),
        seed=prompt_seed,
    script:
        "../scripts/build_detector_prompts.py"


# The detector's images are made by the source's own generator and settings, in
# the source's image folder, from rows no mix holds: only their seeds differ.
use rule generate_shard as generate_detector_images with:
    input:
        prompts=layout.detector_prompts(OUT, "{generated_source}"),
        model=generator_model,
    output:
        index=layout.detector_images(OUT, "{generated_source}"),
        counts=layout.detector_image_counts(OUT, "{generated_source}"),
    log:
        log_of("generate_detector_images"),
    benchmark:
        benchmark_of("generate_detector_images")
    params:
        settings=generation_settings,
        shards=1,
        images_root=layout.generated_root(OUT, "{generated_source}"),


rule build_detector_data:
    input:
        real=real_index,
        generated=detector_image_indexes(),
        manifests=contaminated_manifests(),
    output:
        layout.detector_data(OUT),
    log:
        log_of("build_detector_data"),
    benchmark:
        benchmark_of("build_detector_data")
    conda:
        "../../envs/train.yaml"
    params:
        settings=REMEDIES.get("detector_data", {}),
        seed=config["seed"],
    script:
        "../scripts/build_detector_data.py"


rule audit_format_parity:
    input:
        layout.detector_data(OUT),
    output:
        layout.format_audit(OUT),
    log:
        log_of("audit_format_parity"),
    benchmark:
        benchmark_of("audit_format_parity")
    conda:
        "../../envs/train.yaml"
    params:
        near_chance=REMEDIES.get("audit", {}).get("near_chance"),
        bootstrap=REMEDIES.get("bootstrap"),
        seed=config["seed"],
    script:
        "../scripts/audit_format_parity.py"


rule fit_detector:
    input:
        data=layout.detector_data(OUT),
        manifests=filtered_manifests_sources(),
        extractor=detector_extractor,
    output:
        model=layout.detector_model(OUT, "{detector}"),
        metrics=layout.detector_metrics(OUT, "{detector}"),
        scores=layout.detector_scores(OUT, "{detector}"),
    log:
        log_of("fit_detector"),
    benchmark:
        benchmark_of("fit_detector")
    conda:
        "../../envs/train.yaml"
    threads: threads_of("fit_detector")
    resources:
        mem_mb=mem_of("fit_detector"),
        runtime=runtime_of("fit_detector"),
        gpu=gpus_of("fit_detector"),
    params:
        settings=detector_settings,
    script:
        "../scripts/fit_detector.py"


rule filter_manifest:
    input:
        unpack(filter_inputs),
        manifest=manifest_of,
    output:
        manifest=layout.filtered_manifest(OUT, "{source}", "{ratio}", "{filter}"),
        summary=layout.filtered_summary(OUT, "{source}", "{ratio}", "{filter}"),
    log:
        log_of("filter_manifest"),
    benchmark:
        benchmark_of("filter_manifest")
    conda:
        "../../envs/train.yaml"
    params:
        settings=filter_settings,
    script:
        "../scripts/filter_manifest.py"


# A filtered twin is a manifest like any other: the study's train and evaluate
# jobs run on it unchanged.
use rule train as train_filtered with:
    input:
        manifest=filtered_manifest_of,
        indexes=manifest_indexes,
        cached=train_cached_records,
    output:
        weights=f"{layout.filtered_run_dir(OUT, '{source}', '{ratio}', '{filter}', '{model}', '{seed}')}/model.safetensors",
        history=f"{layout.filtered_run_dir(OUT, '{source}', '{ratio}', '{filter}', '{model}', '{seed}')}/train_log.csv",
    log:
        log_of("train_filtered"),
    benchmark:
        benchmark_of("train_filtered")


use rule evaluate as evaluate_filtered with:
    input:
        weights=rules.train_filtered.output.weights,
        manifest=filtered_manifest_of,
        real=real_index,
        ood=ood_indexes,
        cached=evaluate_cached_records,
    output:
        f"{layout.filtered_run_dir(OUT, '{source}', '{ratio}', '{filter}', '{model}', '{seed}')}/metrics.json",
    log:
        log_of("evaluate_filtered"),
    benchmark:
        benchmark_of("evaluate_filtered")


# One job pretrains and probes: a job's imports cost more than the probe.
rule pretrain_and_probe_ssl:
    input:
        manifest=manifest_of,
        indexes=manifest_indexes,
        real=real_index,
    output:
        encoder=f"{layout.ssl_dir(OUT, '{source}', '{ratio}', '{method}', '{seed}')}/encoder.safetensors",
        history=f"{layout.ssl_dir(OUT, '{source}', '{ratio}', '{method}', '{seed}')}/history.csv",
        metrics=f"{layout.ssl_dir(OUT, '{source}', '{ratio}', '{method}', '{seed}')}/metrics.json",
    log:
        log_of("pretrain_and_probe_ssl"),
    benchmark:
        benchmark_of("pretrain_and_probe_ssl")
    conda:
        "../../envs/train.yaml"
    threads: threads_of("pretrain_and_probe_ssl")
    resources:
        mem_mb=mem_of("pretrain_and_probe_ssl"),
        runtime=runtime_of("pretrain_and_probe_ssl"),
        gpu=gpus_of("pretrain_and_probe_ssl"),
    params:
        settings=ssl_settings,
        probe_C=REMEDIES.get("ssl", {}).get("probe_C"),
        num_classes=contam_config.num_classes(config) if REMEDIES_ON else None,
    script:
        "../scripts/pretrain_and_probe_ssl.py"


rule summarise_remedies:
    input:
        unpack(remedies_summary_inputs),
    output:
        layout.remedies_summary(OUT),
    log:
        log_of("summarise_remedies"),
    benchmark:
        benchmark_of("summarise_remedies")
    conda:
        "../../envs/report.yaml"
    params:
        model=REMEDIES_MODEL,
        origins=report_origins(),
        settings=REMEDIES,
    script:
        "../scripts/summarise_remedies.py"
