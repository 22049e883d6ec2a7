"""Device choice: a job given GPUs never drops to the CPU unless the config allows it."""

import logging
import os

import pytest
import torch

from contam import devices

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="tests what happens when torch sees no CUDA device; this machine has one")


@needs_no_cuda
@pytest.mark.parametrize("setting", ["auto", "cuda", "cuda:1"])
def test_a_gpu_job_without_cuda_fails_and_says_why(setting, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with pytest.raises(devices.NoGPUError) as error:
        devices.pick_device(setting, gpus=2)
    message = str(error.value)
    assert "asked for 2 GPUs" in message and "torch sees no CUDA device" in message
    assert "CUDA_VISIBLE_DEVICES=3" in message and f"CUDA {torch.version.cuda or 'none'}" in message
    assert "execution.allow_cpu_fallback: true" in message
    assert isinstance(error.value, RuntimeError)


@needs_no_cuda
def test_the_fallback_is_allowed_only_by_the_config_and_warns(monkeypatch, caplog):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with caplog.at_level(logging.WARNING, logger="contam.devices"):
        device = devices.pick_device("auto", gpus=1, allow_cpu_fallback=True)
    assert device == torch.device("cpu")
    assert "asked for 1 GPU " in caplog.text and "CUDA_VISIBLE_DEVICES=<unset>" in caplog.text
    assert "allow_cpu_fallback" in caplog.text


@needs_no_cuda
def test_jobs_without_gpus_run_where_they_can():
    assert devices.pick_device("auto", gpus=0) == torch.device("cpu")
    assert devices.pick_device() == torch.device("cpu")


def test_an_explicit_cpu_setting_is_never_an_error():
    assert devices.pick_device("cpu", gpus=4) == torch.device("cpu")


def test_describe_names_the_device_for_the_log():
    assert devices.describe(torch.device("cpu")) == f"cpu ({torch.get_num_threads()} threads)"
    if torch.cuda.is_available():
        text = devices.describe(torch.device("cuda"))
        assert text.startswith("cuda:0 (") and text.endswith(f"{torch.cuda.device_count()} visible)")
        assert torch.cuda.get_device_name(0) in text


def test_deterministic_settings_hold_inside_only(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    with devices.deterministic(True):
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert not torch.are_deterministic_algorithms_enabled()
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    with devices.deterministic(False):
        assert not torch.are_deterministic_algorithms_enabled()
