"""The fused joint-attention map kernel (bridge/capture/joint_kernel.py) on this machine's GPU:

1. on the tiny SD3 (float16) and FLUX (bfloat16) pipelines, capture with the kernel against
   capture op by op (``extra={"fused_maps": False}``): the maps' largest difference relative to
   their largest value, whether the kernel passed its check and ran, and the image against plain;
2. at FLUX.1-dev 512² (24 heads × 128, 1,024 image and 512 text tokens, bfloat16) and
   SD3.5-medium 1024² (24 heads × 64, 4,096 and 333, float16) shapes: GPU time per layer of the
   op-by-op maps and of the kernel (CUDA events, median of ``--reps``).

    python bench/check_joint_kernel.py [--reps 50] [--device cuda]

On a CPU (``--device cpu``) part 1 runs the kernel in Triton's interpreter and part 2 is skipped:
a check of the script, not of a GPU.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import torch

from bridge.capture import capture, joint_kernel
from bridge.capture.maps import joint_text_probabilities
from bridge.models.tiny import tiny_flux_pipeline, tiny_sd3_pipeline


def pipelines_check(device: str) -> dict:
    if device == "cpu":  # the interpreter stands in for the compiler
        kernel = joint_kernel.interpreted()
        joint_kernel.kernel_for = lambda _device: kernel
    launches: list[bool] = []
    launch = joint_kernel.launch

    def counted(*args, **kwargs):
        if len(args) == 7:
            launches.append(args[6])
        launch(*args, **kwargs)

    joint_kernel.launch = counted
    report = {}
    for name, make, dtype, guidance in (("sd3", tiny_sd3_pipeline, torch.float16, 7.0), ("flux", tiny_flux_pipeline, torch.bfloat16, 3.5)):
        pipe = make().to(device, dtype if device == "cuda" else torch.float32)

        def call():
            g = torch.Generator(device="cpu").manual_seed(0)
            return pipe("a red circle above a blue square", height=64, width=64, num_inference_steps=3, guidance_scale=guidance,
                        generator=g, max_sequence_length=32, output_type="np").images

        plain = call()
        with capture(pipe, extra={"fused_maps": False}) as eager:
            call()
        launches.clear()
        with capture(pipe) as fused:
            image = call()
        a = torch.stack([f.cross for f in fused.last_run.frames]).double()
        b = torch.stack([f.cross for f in eager.last_run.frames]).double()
        report[name] = {"max_rel_diff": float((a - b).abs().max() / b.abs().max()), "kernel_launches": len(launches),
                        "layers_x_steps": len(fused.last_run.layers) * 3, "image_identical_to_plain": bool(np.array_equal(image, plain))}
    report["checked"] = [[str(k[1:4]), ok] for k, ok in joint_kernel._checked.items()]  # (device, dtypes) per shape checked
    joint_kernel.launch = launch
    return report


def timing(reps: int) -> dict:
    out = {}
    for name, h, n, t, d, dtype in (("flux_512", 24, 1024, 512, 128, torch.bfloat16), ("sd35m_1024", 24, 4096, 333, 64, torch.float16)):
        g = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(1, h, n, d, device="cuda", generator=g).to(dtype)
        kt = torch.randn(1, h, t, d, device="cuda", generator=g).to(dtype)
        lse = (torch.rand(1, h, n, device="cuda", generator=g) * 4 + math.log(n + t)).float()
        w = torch.ones(h, device="cuda")
        acc = torch.empty(1, t, n, device="cuda")
        kernel = joint_kernel.kernel_for(q.device)
        ok = joint_kernel.usable(kernel, q, kt, lse, w)
        variants = {"op_by_op": lambda: acc.add_(joint_text_probabilities(q, kt, slice(None), w, lse=lse))}
        if ok:
            variants["fused"] = lambda: joint_kernel.launch(kernel, q, kt, lse, w, acc, True)
        out[name] = {"kernel_ok": ok}
        for v, fn in variants.items():
            fn()
            times = []
            for _ in range(reps):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) * 1e3)
            out[name][f"{v}_us"] = round(float(np.median(times)), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    result = {"device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu", "torch": torch.__version__}
    try:
        import triton

        result["triton"] = triton.__version__
    except ImportError:
        result["triton"] = None
    with torch.inference_mode():
        result["pipelines"] = pipelines_check(args.device)
        if args.device == "cuda":
            result["per_layer_gpu_time"] = timing(args.reps)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
