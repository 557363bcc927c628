"""Training-step and inference cost of the demo network: fp32 vs bf16 autocast, and channels_last.

    python bench/bench_precision.py

`trainer.precision=auto` picks bf16-mixed only where the CPU runs bf16 natively (AVX512-BF16/AMX).
"""

import time

import torch

from spacenet7.compose import compose
from spacenet7.models.precision import cpu_has_fast_bf16
from spacenet7.models.task import build_net


def step_time(net, x, bf16: bool) -> float:
    opt = torch.optim.AdamW(net.parameters())
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = net(x)
        y.float().mean().backward()
        opt.step()
        opt.zero_grad()
        best = min(best, time.perf_counter() - t)
    return best / len(x)


@torch.no_grad()
def infer_time(net, x, bf16: bool) -> float:
    net.eval()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            net(x)
        best = min(best, time.perf_counter() - t)
    net.train()
    return best / len(x)


def main() -> None:
    torch.manual_seed(0)
    cfg = compose("train", ["experiment=demo_cpu", "run_dir=/tmp/unused"])
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    net = build_net(cfg.model)
    x = torch.rand(cfg.batch_size, 3, 256, 256)
    f32, b16 = step_time(net, x, False), step_time(net, x, True)
    i32, i16 = infer_time(net, x, False), infer_time(net, x, True)
    print(f"native bf16 on this CPU: {cpu_has_fast_bf16()}; {torch.get_num_threads()} threads, batch {len(x)} x 256^2")
    print(f"train step per chip: fp32 {f32:.3f} s, bf16 {b16:.3f} s, ratio {f32 / b16:.2f}x")
    print(f"inference per chip:  fp32 {i32:.3f} s, bf16 {i16:.3f} s, ratio {i32 / i16:.2f}x")
    cl = build_net(cfg.model).to(memory_format=torch.channels_last)  # what SegmentationTask and predict use
    xc = x.contiguous(memory_format=torch.channels_last)
    c16, ci16 = step_time(cl, xc, True), infer_time(cl, xc, True)
    print(
        f"bf16 channels_last: train step {c16:.3f} s ({b16 / c16:.2f}x vs contiguous), inference {ci16:.3f} s ({i16 / ci16:.2f}x)"
    )


if __name__ == "__main__":
    main()
