# Contam: does generated training data corrupt vision models?
# A reproduction of Hataya, Bao & Arai (ICCV 2023). See README.md.
#
#   make demo                       # the embedded default, on CPU, in minutes
#   snakemake -n --configfile config/imagenet.yaml   # plan the paper's study


# The embedded default, unless --configfile names another experiment: merging
# the two would leak digits settings into a paper-scale config.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/mix.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/generative.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/plan.smk"
include: "workflow/rules/remedies.smk"
include: "workflow/rules/captioning.smk"


localrules:
    all,
    compare_distributions,
    build_prompts,
    gather_generated,
    mix,
    report,
    build_loop_manifest,
    score_reference_floor,
    report_generative,
    plan_costs,
    build_detector_prompts,
    build_detector_data,
    filter_manifest,
    summarise_remedies,
    mix_captions,
    report_captioning,


rule all:
    default_target: True
    input:
        study_targets(),
