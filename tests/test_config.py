import pytest
from snakemake.exceptions import WorkflowError

from conftest import validated
from contam import config as cfg
from contam import config_checks, config_paths, layout


def test_default_config_is_valid(default_config):
    validated(default_config)
    assert default_config["execution"]["device"] == "auto"  # schema defaults are applied


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda c: c["mixing"].update(ratios=[0.0, 1.5]), "ratios"),
        (lambda c: c["mixing"].update(ratios=[-0.1]), "ratios"),
        (lambda c: c["models"]["resnet10t"].update(arch="resnet9000"), "models.resnet10t.arch"),
        (lambda c: c["sources"]["generated"].update(shards=10_000), "sources.generated.shards"),
        (lambda c: c["sources"]["generated"].update(generator="nope"), "sources.generated.generator"),
        (lambda c: c.update(typo_key=1), "typo_key"),
        (lambda c: c["training"].update(optimizer="lion"), "optimizer"),
        (lambda c: c["mixing"].update(ratios=[0.2, 0.20]), "mixing.ratios"),
        (lambda c: c["real"]["split_fractions"].update(train=0.9), "real.split_fractions"),
        (lambda c: c["sources"].update(real={"origin": "control", "real_split": "control"}), "real"),
        (lambda c: c["sources"]["generated"]["prompts"].update(template="no placeholder"), "sources.generated.prompts.template"),
        # Names become path components: nothing may climb out of results/.
        (lambda c: c.update(experiment=".."), "experiment"),
        (lambda c: c.update(experiment="a/b"), "experiment"),
        (lambda c: c["models"].update({"..": {"arch": "resnet18"}}), "models"),
        (lambda c: c["evaluation"].update(ood_sets={"a/b": {"root": "/x"}}), "ood_sets"),
        (lambda c: c["generators"].update({"../g": c["generators"]["digits_ddim"]}), "generators"),
        (lambda c: c.update(results_dir="../elsewhere"), "results_dir"),
        (lambda c: c.update(results_dir="results/../../elsewhere"), "results_dir"),
        # The distribution analysis's reference must be a split nothing trains on.
        (lambda c: c["analysis"].update(reference_split="train"), "analysis.reference_split"),
        (lambda c: c["real"]["split_fractions"].pop("reference"), "analysis.reference_split"),
    ],
)
def test_bad_config_fails_naming_the_key(default_config, mutate, key):
    mutate(default_config)
    with pytest.raises((WorkflowError, config_checks.ConfigError)) as error:
        validated(default_config)
    assert key in str(error.value)


def test_missing_paths_are_named(default_config, tmp_path):
    default_config["real"] = {"kind": "image_folder", "root": str(tmp_path / "absent"), "test_root": str(tmp_path), "class_index": str(tmp_path / "classes.txt"), "num_classes": 2}
    default_config["sources"]["control"] = {"origin": "control", "root": str(tmp_path / "webvision")}
    problems = config_paths.missing_paths(default_config)
    assert any(p.startswith("real.root:") for p in problems)
    assert any(p.startswith("real.class_index:") for p in problems)
    assert any(p.startswith("sources.control.root:") for p in problems)
    assert not any(p.startswith("real.test_root:") for p in problems)


def test_image_folder_requires_its_keys(default_config):
    default_config["real"] = {"kind": "image_folder"}
    with pytest.raises(config_checks.ConfigError) as error:
        validated(default_config)
    for key in ("real.root", "real.test_root", "real.class_index", "real.num_classes"):
        assert key in str(error.value)


@pytest.mark.parametrize("ratio, tag", [(0, "0.0"), (0.0, "0.0"), (0.2, "0.2"), (0.25, "0.25"), (1, "1.0"), (1.0, "1.0")])
def test_ratio_tag(ratio, tag):
    assert layout.ratio_tag(ratio) == tag


def test_runs_share_ratio_zero(default_config):
    validated(default_config)
    runs = cfg.runs(default_config)
    zero = [r for r in runs if r.ratio == "0.0"]
    assert {r.source for r in zero} == {"real"}
    assert len(zero) == len(default_config["models"]) * len(default_config["seeds"])
    n_other = len(default_config["mixing"]["ratios"]) - 1
    assert len(runs) == len(zero) * (1 + n_other * len(default_config["sources"]))


def test_training_recipe_overrides_merge(default_config):
    shared_epochs = default_config["training"]["epochs"]
    default_config["models"]["resnet10t"]["training"] = {"epochs": shared_epochs + 3, "augment": {"hflip": True}}
    recipe = cfg.training_recipe(default_config, "resnet10t")
    assert recipe["epochs"] == shared_epochs + 3
    assert recipe["augment"] == {"crop_scale": [0.8, 1.0], "hflip": True}
    assert default_config["training"]["epochs"] == shared_epochs  # the shared recipe is untouched


def test_timm_model_list_matches_installed_timm():
    import timm

    assert config_checks.known_timm_models() == set(timm.list_models())


def test_command_line_overrides_get_yaml_types():
    # What snakemake hands over for: seeds='[0,1]' training='{epochs: 20, precision: bf16}' experiment=007
    raw = {"seeds": ["0", "1"], "training": {"epochs": "20", "precision": "bf16", "augment": {"hflip": "false"}}, "experiment": "007", "x": {"t": "photo of {name}", "n": "null"}}
    typed = cfg.typed_overrides(raw)
    assert typed["seeds"] == [0, 1]
    assert typed["training"] == {"epochs": 20, "precision": "bf16", "augment": {"hflip": False}}
    assert typed["experiment"] == "007"  # top-level values are typed by snakemake itself
    assert typed["x"] == {"t": "photo of {name}", "n": None}


@pytest.fixture
def coco_config():
    import yaml

    from conftest import REPO

    return yaml.safe_load((REPO / "config" / "coco.yaml").read_text())


def test_generation_only_config_needs_no_study_keys(coco_config):
    validated(coco_config)
    assert cfg.generation_only(coco_config) and cfg.runs(coco_config) == []


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda c: c["sources"].update(webvision={"origin": "control", "root": "/x"}), "sources.webvision.origin"),
        (lambda c: c["sources"]["sd_coco"].update(prompts={"style": "plain"}), "real"),
        (lambda c: c.pop("task"), "real"),  # the classification study needs its real data
        (lambda c: c["generators"]["sd_v1_1"].update(height=500), "generators.sd_v1_1.height"),
        (lambda c: c["generators"]["sd_v1_1"].update(scheduler="pndm", steps=3), "generators.sd_v1_1.steps"),
        (lambda c: c["generators"]["sd_v1_1"].update(on_unsafe="blur"), "on_unsafe"),
        (lambda c: c["sources"]["sd_coco"]["prompts"].pop("captions"), "sources.sd_coco.prompts.captions"),
    ],
)
def test_bad_generation_config_fails_naming_the_key(coco_config, mutate, key):
    mutate(coco_config)
    with pytest.raises((WorkflowError, config_checks.ConfigError)) as error:
        validated(coco_config)
    assert key in str(error.value)


def test_coco_prompts_cannot_train_a_classifier(default_config):
    default_config["generators"]["sd"] = {"kind": "diffusers", "model": "/w"}
    default_config["sources"]["generated"].update(generator="sd", prompts={"style": "coco", "captions": "/c.json"})
    with pytest.raises(config_checks.ConfigError, match="sources.generated.prompts.style"):
        validated(default_config)


def test_absolute_results_dir_is_taken_as_meant(default_config, tmp_path):
    default_config["results_dir"] = str(tmp_path / "elsewhere")
    validated(default_config)


def test_hub_ids_are_an_explicit_opt_in(default_config):
    default_config["generators"]["sd"] = {"kind": "diffusers", "model": "CompVis/stable-diffusion-v1-1"}
    validated(default_config)
    problems = config_paths.missing_paths(default_config)
    assert any(p.startswith("generators.sd.model:") and "allow_download" in p for p in problems)
    assert not config_paths.hub_downloads_allowed(default_config)
    default_config["generators"]["sd"]["allow_download"] = True
    assert not any(p.startswith("generators.sd.model:") for p in config_paths.missing_paths(default_config))
    assert config_paths.hub_downloads_allowed(default_config)
