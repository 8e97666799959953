"""Where bf16 autocast and channels_last pay off: ``auto`` means "where the hardware runs bf16
natively", for training only (evaluation stays fp32 unless asked: rounded logits can mask
gradients).

Native bf16: CUDA devices that report it (compute capability >= 8.0); x86 CPUs with
AVX512-BF16 or AMX (Cooper Lake, Sapphire Rapids, Zen 4 and later); Arm CPUs with the BF16
extension. Elsewhere torch emulates bf16 and a step is several times *slower* than fp32 (11x
on the AVX2-only machine of docs/bench.md), so ``auto`` keeps fp32 there. channels_last follows
the same decision: it is the layout oneDNN's and cuDNN's bf16 convolutions prefer.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")
_X86_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo names
_ARM_FLAGS = ("bf16",)


def cpu_flags(cpuinfo: str) -> set[str]:
    """Feature flags of the first CPU listed in /proc/cpuinfo text (x86 ``flags``, Arm
    ``Features``)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


@functools.cache
def cpu_native_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (torch's own probe first, /proc/cpuinfo
    where torch has none)."""
    probes = [getattr(torch.cpu, name, None)
              for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(probe is not None and probe() for probe in probes):
        return True
    try:
        flags = cpu_flags(CPUINFO.read_text())
    except OSError:
        return False
    wanted = _ARM_FLAGS if platform.machine().lower() in ("aarch64", "arm64") else _X86_FLAGS
    return any(flag in flags for flag in wanted)


def native_bf16(device: torch.device) -> bool:
    """Does ``device`` run bf16 autocast natively (faster than fp32)?"""
    if device.type == "cuda":
        try:  # torch >= 2.4 can tell emulation (pre-Ampere) from hardware
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:
            return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_native_bf16()
    return False


# "0": ``auto`` keeps fp32 on every machine, so that fp32 results (golden values, exact
# agreements in the test suite) reproduce on bf16 hardware too; explicit settings still win
AUTO_ENV = "ADAPTRAIN_AUTO_BF16"


def auto_bf16(device: torch.device) -> bool:
    """What ``auto`` becomes on ``device``: native bf16, unless $ADAPTRAIN_AUTO_BF16 is 0."""
    return os.environ.get(AUTO_ENV, "1") != "0" and native_bf16(device)


def use_amp(setting: str, device: torch.device) -> bool:
    """``amp`` setting (auto | bf16 | off) -> whether training forwards run under bf16 autocast."""
    return setting == "bf16" or (setting == "auto" and auto_bf16(device))


def use_channels_last(setting: str, device: torch.device) -> bool:
    """``channels_last`` setting (auto | on | off) -> whether the model uses that layout."""
    return setting == "on" or (setting == "auto" and auto_bf16(device))
