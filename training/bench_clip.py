#!/usr/bin/env python3
"""PyTorch baseline for `reimagen bench clip` (src/bench/clip.rs): transformers' CLIPModel built
from the same config.json the Rust side loads (random weights: speed does not depend on them),
timed on the same inputs — pixel_values [B, 3, S, S] and token batches of the full context —
with the conventions of bench_torch.py (inference mode, one warm-up, median of the runs).

    python training/bench_clip.py --config FOLDER [--json] [--threads N] [--device cpu|cuda]
    python training/bench_clip.py --serve --config FOLDER [--threads N] [--device cpu|cuda]

With --serve (what `bench clip --torch PYTHON` uses) it prints a header line (JSON: versions,
device, threads), then answers requests on stdin, one JSON per line, {"case": NAME, "runs": N},
with {"name": NAME, "times": [seconds, ...]}, so that the Rust side can alternate its runs with
PyTorch's. Case names: image_bB and text_bB (B: the batch size), as in bench/clip.rs.
"""
import argparse
import json
import sys
import time

import torch
import transformers
from transformers import CLIPConfig, CLIPModel


def inputs(config, kind, batch, dev):
    g = torch.Generator(device="cpu").manual_seed(0)
    if kind == "image":
        s = config.vision_config.image_size
        return {"pixel_values": (torch.rand(batch, 3, s, s, generator=g) * 3.9 - 1.8).to(dev)}
    t = config.text_config
    length, eos = t.max_position_embeddings, t.eos_token_id
    ids = torch.randint(0, max(eos - 1, 1), (batch, length), generator=g)
    ids[:, 0], ids[:, -1] = eos - 1, eos
    return {"input_ids": ids.to(dev), "attention_mask": torch.ones_like(ids).to(dev)}


def runner(model, config, name, dev, sync):
    kind, batch = name.split("_b")
    x = inputs(config, kind, int(batch), dev)
    forward = model.get_image_features if kind == "image" else model.get_text_features

    def run():
        forward(**x)
        sync()

    return run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, help="a model folder holding config.json")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--serve", action="store_true")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    device = a.device if dev.type != "cuda" else f"cuda ({torch.cuda.get_device_name()})"
    config = CLIPConfig.from_pretrained(a.config)
    torch.manual_seed(0)
    model = CLIPModel(config).float().eval().to(dev)
    header = {"torch_version": torch.__version__,
              "transformers_version": transformers.__version__,
              "device": device, "threads": torch.get_num_threads()}
    runs = {}
    with torch.inference_mode():
        if a.serve:
            print(json.dumps(header), flush=True)
            for line in sys.stdin:
                req = json.loads(line)
                name = req["case"]
                if name not in runs:
                    runs[name] = runner(model, config, name, dev, sync)
                times = []
                for _ in range(req["runs"]):
                    s = time.perf_counter()
                    runs[name]()
                    times.append(time.perf_counter() - s)
                print(json.dumps({"name": name, "times": times}), flush=True)
            return
        results = []
        for name in ["image_b1", "image_b32", "text_b1", "text_b32"]:
            run = runner(model, config, name, dev, sync)
            run()
            times, t0 = [], time.perf_counter()
            while len(times) < 10 and (len(times) < 3 or time.perf_counter() - t0 < 5.0):
                s = time.perf_counter()
                run()
                times.append(time.perf_counter() - s)
            t = sorted(times)[len(times) // 2]
            batch = int(name.split("_b")[1])
            results.append({"name": name, "median_ms": t * 1e3, "per_sec": batch / t,
                            "runs": len(times)})
    if a.json:
        print(json.dumps({**header, "cases": results}))
    else:
        print(f"PyTorch {header['torch_version']} on {device}, {header['threads']} threads")
        for r in results:
            print(f"{r['name']:<10} {r['per_sec']:8.2f}/s ({r['median_ms']:.1f} ms)")


if __name__ == "__main__":
    main()
