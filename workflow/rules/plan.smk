# The cost plan: every job of this config, sized and timed from the ledger of
# measured jobs, before (or instead of) running them. Not part of `all`:
#   snakemake --configfile config/imagenet.yaml results/imagenet/plan/plan.json


rule plan_costs:
    output:
        plan=f"{OUT}/plan/plan.json",
        page=f"{OUT}/plan/plan.html",
    log:
        log_of("plan_costs"),
    conda:
        "../../envs/plan.yaml"
    params:
        settings=config["plan"],
    script:
        "../scripts/plan_costs.py"


# Every successful run adds its benchmark files to the ledger, so the next
# plan is fitted on this machine's own measurements.
onsuccess:
    if config["plan"]["gather_on_success"]:
        gather_into_ledger()
