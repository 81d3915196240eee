"""Which fused attention kernels can hand over their log-sum-exp with the output bit-identical to
``F.scaled_dot_product_attention`` (bridge/capture/sdpa_tap.py), and what each costs, at SD3.5-medium's
joint-attention shape (1024², CFG: batch 2, 24 heads, 4096 image + 333 text tokens, head dim 64).

    python bench/check_sdpa_tap.py [--reps 50]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from bridge.capture import sdpa_tap


def _time(fn, reps: int) -> float:
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=50)
    args = ap.parse_args()
    print(torch.__version__, torch.cuda.get_device_name(0), "cuDNN", torch.backends.cudnn.version())
    names = {1: "flash", 2: "efficient", 3: "cudnn"}
    for dtype in (torch.float16, torch.bfloat16):
        for b, h, s, d in ((2, 24, 4096 + 333, 64), (2, 4, 256 + 109, 8)):
            g = torch.Generator(device="cuda").manual_seed(0)
            q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=dtype, generator=g) for _ in range(3))
            chosen = int(torch._fused_sdp_choice(q, k, v, None, 0.0, False))
            ref = F.scaled_dot_product_attention(q, k, v)
            line = [f"{str(dtype)[6:]} {b}x{h}x{s}x{d}: F.sdpa picks {names.get(chosen, chosen)} {_time(lambda: F.scaled_dot_product_attention(q, k, v), args.reps):.3f} ms"]
            for backend, kernel in ((1, sdpa_tap._flash_cuda), (2, sdpa_tap._efficient), (3, sdpa_tap._cudnn)):
                try:
                    out, lse = kernel(q, k, v)
                except Exception as exc:  # noqa: BLE001
                    line.append(f"{names[backend]}: n/a ({type(exc).__name__})")
                    continue
                same = torch.equal(out, ref)
                line.append(f"{names[backend]}+lse: out {'identical' if same else 'differs %.1e' % float((out.float() - ref.float()).abs().max())}, "
                            f"lse {'ok' if sdpa_tap._lse_agrees(q, k, lse) else 'WRONG'} {tuple(lse.shape)}, "
                            f"{_time(lambda: kernel(q, k, v), args.reps):.3f} ms")
            half = slice(b // 2, b)
            line.append(f"recompute (flash, v=k, cond rows): {_time(lambda: torch.ops.aten._scaled_dot_product_flash_attention(q[half], k[half], k[half], 0.0, False, False), args.reps):.3f} ms")
            tapped = sdpa_tap.attention_with_lse(q, k, v)
            line.append(f"tap: lse {'given' if tapped[1] is not None else 'none'}, out identical {torch.equal(tapped[0], ref)}")
            print("\n  ".join(line))


if __name__ == "__main__":
    main()
