"""Training-step and inference cost of the demo network against the encoders it replaced.

    python bench/bench_models.py

Each network runs the way `train` and `predict` run it here: bf16 autocast where the CPU has
native bf16, channels_last, `experiment=demo_cpu` threads and batch, 256^2 chips (a 2x-upscaled
128^2 window). Timings are interleaved (best of 3 per round, 2 rounds) so that the ratios come
from the same conditions.
"""

import torch
from bench_precision import infer_time, step_time

from spacenet7.compose import compose
from spacenet7.models.precision import cpu_has_fast_bf16
from spacenet7.models.task import build_net

CANDIDATES = {
    "demo (conf/model/unet_small.yaml)": {},
    "the demo's with batch norm in the decoder (smp's default)": {"decoder_use_norm": "batchnorm"},
    "resnet18, depth 3, decoder [64, 32, 16] with batch norm (the demo's network before)": {
        "encoder_name": "resnet18",
        "decoder_channels": [64, 32, 16],
        "decoder_use_norm": "batchnorm",
    },
}


def main() -> None:
    torch.manual_seed(0)
    cfg = compose("train", ["experiment=demo_cpu", "run_dir=/tmp/unused"])
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    bf16 = cpu_has_fast_bf16()
    x = torch.rand(cfg.batch_size, 3, 256, 256).contiguous(memory_format=torch.channels_last)
    nets = {name: build_net({**cfg.model, **change}).to(memory_format=torch.channels_last) for name, change in CANDIDATES.items()}
    train = {name: float("inf") for name in nets}
    infer = dict(train)
    for _ in range(2):
        for name, net in nets.items():
            train[name] = min(train[name], step_time(net, x, bf16))
            infer[name] = min(infer[name], infer_time(net, x, bf16))
    demo = next(iter(nets))
    print(f"bf16: {bf16}; {torch.get_num_threads()} threads, batch {len(x)} x 256^2, channels_last")
    for name, net in nets.items():
        params = sum(p.numel() for p in net.parameters()) / 1e6
        print(
            f"{name}: {params:.2f} M params; train step {train[name] * 1e3:.1f} ms/chip "
            f"({train[name] / train[demo]:.2f}x the demo's), inference {infer[name] * 1e3:.1f} ms/chip "
            f"({infer[name] / infer[demo]:.2f}x)"
        )


if __name__ == "__main__":
    main()
