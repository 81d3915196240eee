"""``stepx bench``: capture overhead as a ratio to plain generation, in the same process."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bridge.commands.common import add_threads_argument


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default="shapes", choices=["shapes", "tiny", "dispatch", "sd15", "sdturbo", "sdxl", "sd35m", "flux"],
                   help="model: embedded shapes, tiny random, dispatch (SD 1.5's topology with tiny channels at 32²: a CPU proxy "
                        "of the launch-bound GPU regime), or a full-size random-weight architecture")
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--max-seconds", type=float, default=None, metavar="S",
                   help="start no new round after S seconds of timed rounds (then fewer than --runs are reported): "
                        "for machines that stop a command at a time limit")
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--scheduler", default=None, help="the full-size UNet pipelines' scheduler (default: the model's): "
                   "euler, ddim, dpm, heun, dpm2, pndm, euler_a, lms, or the few-step lcm and turbo")
    p.add_argument("--variants", nargs="+", default=["plain", "capture", "publish", "queries"], choices=["plain", "capture", "capture_eager", "capture_unfused", "publish", "publish_device", "publish_inproc", "publish_null", "publish_drop", "publish_ring", "capture_latent", "capture_busy", "queries", "daam"],
                   help="capture_eager: capture with the map maths never replayed as a CUDA graph; capture_unfused: "
                        "capture with each layer's maps op by op instead of by the fused kernel (CaptureConfig.extra fused_maps=False: UNet "
                        "cross_kernel, MM-DiT joint_kernel); publish: capture + phases + "
                        "ZeroMQ as the runner does with a PacketProcess (the sink and the phases in the child, on its CPU); publish_drop: the "
                        "runner as for publish, its recipes dropped (no pickling, no socket); capture_latent: capture with the "
                        "runner's latent output and one VAE decode, no packets; capture_busy: capture while two other processes keep a CPU "
                        "busy 4 ms in every 30 (about what the sink process and a subscriber do); "
                        "publish_device: the same with the phases compiled on the GPU; publish_inproc: the sink in this "
                        "process (FanOut; phases on the GPU where there is one) on the next port; publish_null: the runner with no sink (no encoding, "
                        "no socket); publish_ring: as publish with the step ring (stepx serve --step-ring on: each step's maps land in memory "
                        "the sink process maps, no thread woken) on the port after")
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default: the model's)")
    p.add_argument("--layers", type=int, default=None, metavar="N",
                   help="sd35m, flux: N blocks of each kind (and N T5 layers) instead of the model's: a CPU dry run of the GPU "
                        "bench's code path")
    p.add_argument("--map-size", type=int, default=None, help="side of the captured maps (default: the latent's)")
    add_threads_argument(p)  # 1 for the dispatch proxy
    p.add_argument("--switch-interval", type=float, default=None, metavar="S",
                   help="Python's GIL switch interval for the whole bench (sys.setswitchinterval; default 0.005)")
    p.add_argument("--model-cpus", default=None, metavar="LIST", help="run the model's process on these CPUs only (e.g. 0-7; Linux)")
    p.add_argument("--pin-thread", type=int, default=None, metavar="CPU",
                   help="keep the model's thread (every variant's) on this one CPU for the timed rounds (Linux)")
    p.add_argument("--pin-alone", action="store_true",
                   help="with --pin-thread: move every other thread of the process off that CPU too (give --sink-cpus without it)")
    p.add_argument("--sink-cpus", default=None, metavar="LIST", help="run the sink process and the latency subscriber on these CPUs only")
    p.add_argument("--endpoint", default="tcp://127.0.0.1:5599", metavar="URL",
                   help="where the publish variants' sink binds (publish_inproc: the next port); another on a shared machine")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    p.add_argument("--profile", default=None, metavar="FILE", help="also profile one call of each variant (torch.profiler) into FILE")


def run(args: argparse.Namespace) -> int:
    import torch

    from bridge.bench import print_table, run_bench
    from bridge.models.loading import load_pipeline, pick_device
    from bridge.stream.process import parse_cpus, set_cpus

    if args.model_cpus:
        set_cpus(cpus := parse_cpus(args.model_cpus))
        torch.set_num_threads(min(torch.get_num_threads(), len(cpus)))  # OpenMP sized its pool before: no spinning on fewer CPUs
    sink_cpus = parse_cpus(args.sink_cpus) if args.sink_cpus else None
    device = pick_device(args.device)
    if args.switch_interval:
        import sys

        sys.setswitchinterval(args.switch_interval)
    if args.arch in ("sd15", "sdturbo", "sdxl", "sd35m", "flux"):
        from bridge.models import fullsize

        dtype = (torch.bfloat16 if args.arch == "flux" else torch.float16) if device.type == "cuda" else torch.float32
        extra = {"scheduler": args.scheduler} if args.scheduler else {}
        if extra and args.arch not in ("sd15", "sdturbo", "sdxl"):
            raise SystemExit(f"--scheduler applies to the UNet architectures, not {args.arch} (flow matching)")
        if args.layers:
            if args.arch not in ("sd35m", "flux"):
                raise SystemExit(f"--layers applies to sd35m and flux, not {args.arch}")
            extra.update({"layers": args.layers} if args.arch == "sd35m" else
                         {"layers": args.layers, "single_layers": args.layers, "t5_layers": args.layers})
        pipe = getattr(fullsize, f"{args.arch}_pipeline")(str(device), dtype, **extra)
    elif args.arch == "dispatch":
        from bridge.models.tiny import dispatch_sd_pipeline

        pipe = dispatch_sd_pipeline().to(device)
    else:
        pipe, _ = load_pipeline(None if args.arch == "shapes" else "tiny", str(device))
    from bridge.heap import freeze_heap
    from bridge.threads import configure_threads

    configure_threads(args.threads, device)
    freeze_heap()  # as `stepx serve` does once its model is loaded
    if "plain" not in args.variants:
        args.variants = ["plain", *args.variants]
    result = run_bench(pipe, args.steps, args.runs, args.warmup, args.guidance, args.variants, profile=args.profile,
                       height=args.size, width=args.size, map_size=args.map_size, sink_cpus=sink_cpus,
                       max_seconds=args.max_seconds, endpoint=args.endpoint, pin_thread=args.pin_thread, pin_alone=args.pin_alone)
    result["switch_interval"] = __import__("sys").getswitchinterval()
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0
