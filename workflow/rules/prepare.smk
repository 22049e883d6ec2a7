# Cached copies (prepare.enabled): each collection of images resized once and
# re-encoded as JPEG (contam.prepare); train and evaluate then read the copies.
# The images live in images-<settings id>/ beside the records, not as declared
# outputs, so a killed job keeps the copies it made and its rerun reuses them.


rule prepare_cached_copies:
    input:
        index=collection_index,
    output:
        records=layout.cached_records(OUT, "{collection}"),
        counts=layout.cached_counts(OUT, "{collection}"),
    log:
        log_of("prepare_cached_copies"),
    benchmark:
        benchmark_of("prepare_cached_copies")
    conda:
        "../../envs/train.yaml"
    threads: threads_of("prepare_cached_copies")
    resources:
        mem_mb=mem_of("prepare_cached_copies"),
        runtime=runtime_of("prepare_cached_copies"),
    params:
        settings=PREPARE_SETTINGS.__dict__,
        images=cached_images,
    script:
        "../scripts/prepare_cached_copies.py"
