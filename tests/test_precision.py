"""`amp: auto` / `channels_last: auto` turn on exactly where bf16 is native."""

from __future__ import annotations

import pytest
import torch

from adaptrain import precision

X86 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 {extra}\nbogomips\t: 4890\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd {extra} sve\n"


@pytest.fixture(autouse=True)
def _auto_follows_the_hardware(monkeypatch):
    monkeypatch.delenv(precision.AUTO_ENV, raising=False)  # the suite pins fp32 (conftest.py)


def test_the_environment_can_keep_auto_in_fp32_on_bf16_hardware(monkeypatch):
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: True)
    cpu = torch.device("cpu")
    assert precision.use_amp("auto", cpu) and precision.use_channels_last("auto", cpu)
    monkeypatch.setenv(precision.AUTO_ENV, "0")
    assert not precision.use_amp("auto", cpu) and not precision.use_channels_last("auto", cpu)
    assert precision.use_amp("bf16", cpu) and precision.use_channels_last("on", cpu)


def test_cpu_flags_reads_x86_and_arm_feature_lines():
    assert {"avx2", "avx512_bf16"} <= precision.cpu_flags(X86.format(extra="avx512_bf16"))
    assert "bf16" in precision.cpu_flags(ARM.format(extra="bf16"))
    assert precision.cpu_flags("no flags here") == set()


@pytest.mark.parametrize(("machine", "text", "native"), [
    ("x86_64", X86.format(extra=""), False),               # AVX2 only: bf16 is emulated
    ("x86_64", X86.format(extra="avx512_bf16"), True),
    ("x86_64", X86.format(extra="amx_bf16 amx_tile"), True),
    ("aarch64", ARM.format(extra="bf16"), True),
    ("aarch64", ARM.format(extra="i8mm"), False),
])
def test_cpu_native_bf16_from_cpuinfo(monkeypatch, tmp_path, machine, text, native):
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(text)
    monkeypatch.setattr(precision, "CPUINFO", cpuinfo)
    monkeypatch.setattr(precision.platform, "machine", lambda: machine)
    precision.cpu_native_bf16.cache_clear()
    try:
        assert precision.cpu_native_bf16() is native
    finally:
        precision.cpu_native_bf16.cache_clear()


def test_torch_probe_counts_as_native(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    precision.cpu_native_bf16.cache_clear()
    try:
        assert precision.cpu_native_bf16()
    finally:
        precision.cpu_native_bf16.cache_clear()


@pytest.mark.parametrize("native", [False, True])
def test_auto_follows_the_hardware_and_explicit_settings_win(monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert precision.use_amp("auto", cpu) is native
    assert precision.use_channels_last("auto", cpu) is native
    assert precision.use_amp("bf16", cpu) and precision.use_channels_last("on", cpu)
    assert not precision.use_amp("off", cpu) and not precision.use_channels_last("off", cpu)


@pytest.mark.parametrize("native", [False, True])
def test_training_autocasts_and_records_what_auto_became(monkeypatch, tmp_path, native):
    from adaptrain.config import build_config
    from adaptrain.train import setup, write_outputs

    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: native)
    cfg = build_config("quickstart", ["data.subset=128", "epochs=1", "device=cpu"])
    run = setup(cfg, tmp_path / "run")
    with run.amp():
        assert torch.is_autocast_enabled("cpu") is native
    conv = [m for m in run.model.modules() if isinstance(m, torch.nn.Conv2d)][-1]  # C_in > 1
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) is native
    run.out.mkdir(parents=True)
    summary = write_outputs(run, "quickstart", finished=False)
    assert summary["precision"] == {"bf16_autocast": native, "channels_last": native}
