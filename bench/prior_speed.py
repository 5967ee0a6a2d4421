"""Speed and memory of the HDiT-3D prior configs: python bench/prior_speed.py [--configs tiny,small] [--batch 1]

Prints, per config and box on the device at hand: parameters, GFLOP per forward (counted by
torch.utils.flop_counter), forward and forward+backward (to the input, as in a posterior step)
time, achieved TFLOP/s, and peak memory (CUDA only). Paper configs (cryofm-s, cryofm-l) need a GPU.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from cryoinverse.priors.hdit import build_model, config_by_name


def timed(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="tiny,small", help="comma-separated config names")
    parser.add_argument("--batch", type=int, default=1, help="boxes per batch")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, batch {args.batch}")
    print(f"{'config':10s} {'box':>4s} {'params M':>9s} {'GFLOP fwd':>10s} {'fwd ms':>9s} {'fwd+bwd ms':>11s} {'TFLOP/s':>8s} {'peak GiB':>9s}")
    for name in args.configs.split(","):
        config = config_by_name(name)
        model = build_model(config).to(device).eval()
        box = config.box
        x = torch.randn(args.batch, box, box, box, device=device)
        t = torch.full((args.batch,), 0.5, device=device)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.bf16 and device.type == "cuda")
        with FlopCounterMode(display=False) as counter, torch.no_grad(), autocast:
            model(x, t)
        flops = counter.get_total_flops()

        def forward():
            with torch.no_grad(), autocast:
                model(x, t)

        def forward_backward():
            xi = x.clone().requires_grad_(True)
            with autocast:
                out = model(xi, t)
            torch.autograd.grad(out.float().square().sum(), xi)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        fwd = timed(forward, args.repeats, device)
        both = timed(forward_backward, args.repeats, device)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"{name:10s} {box:4d} {params:9.2f} {flops / 1e9:10.2f} {fwd * 1e3:9.1f} {both * 1e3:11.1f} {flops / fwd / 1e12:8.3f} {peak:9.2f}")


if __name__ == "__main__":
    main()
