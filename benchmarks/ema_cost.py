"""Cost of one EMA update (adaptrain.ema) against one clean SGD step (forward + backward +
step on a batch of 128) of PreActResNet-18 at widths 16 and 64, CPU, one thread; figures in
docs/ema.md. Usage: ``OMP_NUM_THREADS=1 python benchmarks/ema_cost.py``."""
import time

import torch

from adaptrain.data.base import DataSpec
from adaptrain.ema import EMA
from adaptrain.models import build_model

torch.set_num_threads(1)
spec = DataSpec("cifar10", 10, 3, (32, 32), (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
for width in (16, 64):
    model = build_model({"name": "preact_resnet18", "width": width}, spec)
    ema = EMA(model, 0.995)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.rand(128, 3, 32, 32), torch.randint(0, 10, (128,))
    for _ in range(3):
        ema.update(1000)
    t0 = time.perf_counter()
    for i in range(50):
        ema.update(1000 + i)
    upd = (time.perf_counter() - t0) / 50
    t0 = time.perf_counter()
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    step = (time.perf_counter() - t0) / 3
    n = sum(p.numel() for p in model.parameters())
    print(f"width {width}: {n/1e6:.2f} M parameters, EMA update {1e3*upd:.2f} ms, "
          f"one clean SGD step {1e3*step:.0f} ms (a PGD-10 step costs ~11 of those)")
