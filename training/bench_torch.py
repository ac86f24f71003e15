#!/usr/bin/env python3
"""PyTorch baseline for `reimagen bench kernels` (src/tensor/bench.rs): the same cases, the same
shapes, the same work definitions and the same timing rule (one warm-up, then the median of up to
10 runs, 3 with --quick, stopping after 3 s once 3 runs are in), so the ratios are like for like.

    python training/bench_torch.py [--json] [--threads N] [--device cpu|cuda] [--quick]
    python training/bench_torch.py --serve [--threads N] [--device cpu|cuda]

With --serve (what `bench kernels --torch PYTHON` uses) it prints a header line (JSON: version,
device, threads), then answers requests on stdin, one JSON per line, {"case": NAME, "runs": N},
with {"name": NAME, "times": [seconds, ...]}: the Rust side alternates its own runs with
PyTorch's, case by case, so both see the same machine load.

Cases (names match CASES in bench.rs):
  matmul_MxKxN         F.linear(x [M,K], w [N,K])                 2·M·N·K flops
  conv2d_3x3_64x64x128 F.conv2d([1,128,64,64], [128,128,3,3], p=1) 2·128·128·9·64·64 flops
  attention_8x1024x64  F.scaled_dot_product_attention, [8,1024,64] 4·8·1024²·64 flops
  copy_64MiB           x.clone() of 16 Mi floats                   2 × 64 MiB moved
"""
import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

CASES = [
    ("matmul_4096x320x320", "matmul", (4096, 320, 320)),
    ("matmul_1024x1280x1280", "matmul", (1024, 1280, 1280)),
    ("matmul_4096x512x2048", "matmul", (4096, 512, 2048)),
    ("matmul_257x768x768", "matmul", (257, 768, 768)),
    ("conv2d_3x3_64x64x128", "conv2d", (128, 64, 64, 128)),
    ("attention_8x1024x64", "attention", (8, 1024, 64)),
    ("copy_64MiB", "copy", (16 << 20,)),
]


def work(kind, d):
    if kind == "matmul":
        return 2.0 * d[0] * d[1] * d[2]
    if kind == "conv2d":
        return 2.0 * d[3] * d[0] * 9 * d[1] * d[2]
    if kind == "attention":
        return 4.0 * d[0] * d[1] * d[1] * d[2]
    return 2.0 * 4 * d[0]


def make(kind, d, dev):
    g = torch.Generator(device="cpu").manual_seed(0)
    r = lambda *s: (torch.rand(*s, generator=g) - 0.5).to(dev)
    if kind == "matmul":
        x, w = r(d[0], d[1]), r(d[2], d[1])
        return lambda: F.linear(x, w)
    if kind == "conv2d":
        x, w = r(1, d[0], d[1], d[2]), r(d[3], d[0], 3, 3)
        return lambda: F.conv2d(x, w, padding=1)
    if kind == "attention":
        q, k, v = r(d[0], d[1], d[2]), r(d[0], d[1], d[2]), r(d[0], d[1], d[2])
        return lambda: F.scaled_dot_product_attention(q, k, v)
    x = r(d[0])
    return lambda: x.clone()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--serve", action="store_true")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    device = a.device if dev.type != "cuda" else f"cuda ({torch.cuda.get_device_name()})"
    if a.serve:
        serve(dev, sync, device)
        return
    max_runs = 3 if a.quick else 10
    results = []
    with torch.inference_mode():
        for name, kind, d in CASES:
            fn = make(kind, d, dev)
            fn()
            sync()
            times, t0 = [], time.perf_counter()
            while len(times) < max_runs and (len(times) < 3 or time.perf_counter() - t0 < 3.0):
                s = time.perf_counter()
                fn()
                sync()
                times.append(time.perf_counter() - s)
            t = sorted(times)[len(times) // 2]
            unit = "gbps" if kind == "copy" else "gflops"
            results.append({"name": name, "kind": kind, "median_ms": t * 1e3,
                            unit: work(kind, d) * 1e-9 / t, "runs": len(times)})
    report = {"torch_version": torch.__version__, "device": device,
              "threads": torch.get_num_threads(), "cases": results}
    if a.json:
        print(json.dumps(report))
    else:
        print(f"PyTorch {report['torch_version']} on {device}, {report['threads']} threads")
        for r in results:
            rate = r.get("gflops", r.get("gbps"))
            print(f"{r['name']:<24} {rate:8.1f} ({r['median_ms']:.2f} ms)")


def serve(dev, sync, device):
    print(json.dumps({"torch_version": torch.__version__, "device": device,
                      "threads": torch.get_num_threads()}), flush=True)
    kinds = {name: (kind, d) for name, kind, d in CASES}
    fns = {}
    with torch.inference_mode():
        for line in sys.stdin:
            req = json.loads(line)
            name = req["case"]
            if name not in fns:
                fns[name] = make(*kinds[name], dev)
            times = []
            for _ in range(req["runs"]):
                s = time.perf_counter()
                fns[name]()
                sync()
                times.append(time.perf_counter() - s)
            print(json.dumps({"name": name, "times": times}), flush=True)


if __name__ == "__main__":
    main()
