"""Transport benchmark: publish -> receive latency (p50/p99) and throughput on loopback ZeroMQ.

Cases: 77x64x64 float16 word textures, a 512x512 RGBA image, and a slow subscriber (3x slower
than the publisher, drain-to-latest). Latency = encode + send + receive + decode, measured with
one clock (same process, two threads).

    python bench/transport_bench.py [--frames 500] [--rate 60]
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np

from bridge.protocol import Packet
from bridge import protocol as wire
from bridge.transport.zmq_pub import ZmqPublisher
from bridge.transport.zmq_sub import ZmqSubscriber, wait_joined


def run_case(name: str, arrays: dict, encoding: str, frames: int, rate: float, consumer_period: float = 0.0) -> None:
    pub = ZmqPublisher("tcp://127.0.0.1:*", sndhwm=4)
    sub = ZmqSubscriber(pub.endpoint, topics=["stepx/step"])
    wait_joined(pub, sub, timeout=10.0, kind="step")
    lat: list[float] = []
    nbytes = len(wire.encode(Packet("step", {"t": 0.0}, arrays), encoding))
    done = threading.Event()

    def consume() -> None:
        while not done.is_set():
            pk = sub.recv_latest(timeout=0.2) if consumer_period else sub.recv(timeout=0.2)
            if pk is not None:
                lat.append(time.perf_counter() - pk.header["t"])
                if consumer_period:
                    time.sleep(consumer_period)

    th = threading.Thread(target=consume, daemon=True)
    th.start()
    t0 = time.perf_counter()
    for i in range(frames):
        pub.send_bytes(wire.encode(Packet("step", {"step": i, "t": time.perf_counter()}, arrays), encoding))
        if rate:
            time.sleep(max(0.0, t0 + (i + 1) / rate - time.perf_counter()))
    wall = time.perf_counter() - t0
    time.sleep(0.3)
    done.set(); th.join()
    sub.close(); pub.close()
    a = np.array(lat) * 1000
    print(f"{name:<34} {nbytes / 1e6:7.3f} MB  sent {frames / wall:7.1f} fps  received {len(a):5d}  "
          f"p50 {np.percentile(a, 50):6.2f} ms  p99 {np.percentile(a, 99):6.2f} ms  max {a.max():6.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=500)
    ap.add_argument("--rate", type=float, default=60.0)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    tex = {"textures": rng.random((77, 64, 64), dtype=np.float32)}
    img = {"image": rng.integers(0, 256, (512, 512, 4), dtype=np.uint8)}
    run_case(f"textures 77x64x64 f16 @{args.rate:g}Hz", tex, "float16", args.frames, args.rate)
    run_case(f"image 512x512 RGBA @{args.rate:g}Hz", img, "float32", args.frames, args.rate)
    run_case("textures f16 throughput (no pacing)", tex, "float16", args.frames, 0)
    run_case("image RGBA throughput (no pacing)", img, "float32", args.frames, 0)
    period = 3.0 / args.rate
    run_case("textures f16, subscriber 3x slower", tex, "float16", args.frames, args.rate, consumer_period=period)
    t = time.perf_counter()
    for _ in range(100):
        wire.encode(Packet("step", {}, tex), "float16")
    print(f"encode 77x64x64 float32->float16: {(time.perf_counter() - t) * 10:.2f} ms per packet")


if __name__ == "__main__":
    main()
