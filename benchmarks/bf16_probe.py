"""Does this CPU run bf16 natively? Times one forward + input-gradient backward (an attack
step) of PreActResNet-18 width 16 at batch 128 in fp32 and in bf16 autocast + channels_last,
at a fixed batch size and at changing ones (as compaction produces).

    OMP_NUM_THREADS=2 python benchmarks/bf16_probe.py

Prints torch's CPU capability and the bf16 flags of /proc/cpuinfo first.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from adaptrain.data.base import DataSpec
from adaptrain.models import build_model

SIZES = (127, 121, 113, 100, 90, 77)


def step(model: torch.nn.Module, b: int, bf16: bool, channels_last: bool) -> None:
    x = torch.rand(b, 3, 32, 32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(x).float().sum()
    loss.backward()


def main() -> None:
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    print("capability", torch.backends.cpu.get_cpu_capability(),
          "bf16 flags", sorted({f for f in flags if "bf16" in f}) or "none")
    spec = DataSpec("cifar10", 10, 3, (32, 32), (0.5,) * 3, (0.25,) * 3)
    model = build_model({"name": "preact_resnet18", "width": 16}, spec).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    for bf16, cl in ((False, False), (True, True)):
        if cl:
            model = model.to(memory_format=torch.channels_last)
        step(model, 128, bf16, cl)  # warm-up
        t = time.perf_counter()
        for _ in range(3):
            step(model, 128, bf16, cl)
        fixed = (time.perf_counter() - t) / 3
        t = time.perf_counter()
        for b in SIZES:
            step(model, b, bf16, cl)
        varying = (time.perf_counter() - t) / len(SIZES)
        print(f"bf16={bf16} channels_last={cl}: batch 128 {fixed * 1000:.0f} ms/step, "
              f"changing batch sizes {varying * 1000:.0f} ms/step")


if __name__ == "__main__":
    main()
