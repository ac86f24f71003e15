#!/usr/bin/env python3
"""PyTorch baseline for `reimagen bench generate` (src/bench/generate.rs): the reference model
(training/reimagen/) loaded from the SAME stage folders (safetensors) the Rust side runs, timing
the same work: one sampler step — every branch of the default interleaved guidance ("pn", "p")
batched in one UNet call through reimagen.guidance.unet_call, K neighbours — and the encoding of
the K neighbours (text tower + DStack at t = 0, one by one as the cascade does), in inference
mode, with the CPU backend's thread count.

    python training/bench_generate.py --model CASCADE [--stages a,b] [--batch B] [--k K] [--json]
    python training/bench_generate.py --serve --model CASCADE [--stages a,b] [--batch B] [--k K]
        [--threads N]

With --serve (what `bench generate --torch PYTHON` uses) it prints a header line (JSON: version,
threads), then answers requests on stdin, one JSON per line, {"case": NAME, "runs": N}, with
{"name": NAME, "times": [seconds, ...]}. Cases: step:STAGE, encode:STAGE, and rss, whose one
"time" is the process's peak resident set in KiB.

The reference re-projects the neighbour keys and values in every call (the Rust runtime makes
them once per generation, docs/generator.md §5): that is part of its step here.
"""
import argparse
import json
import pathlib
import resource
import sys
import time

import torch
from transformers.utils import logging as hf_logging

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from reimagen.export import load_stage  # noqa: E402
from reimagen.guidance import Condition, unet_call  # noqa: E402
from reimagen.text import TextEncoder  # noqa: E402

PROMPT = "a smiling red heart with arms, twemoji style"
BRANCHES = ["pn", "p"]  # the default interleaved guidance's call (ε̂_n's step)
STEP_T = 500


class StageBench:
    def __init__(self, folder: pathlib.Path, batch: int, k: int):
        self.model = load_stage(folder)
        cfg = self.model.cfg
        self.cfg = cfg
        self.text = TextEncoder(folder / cfg.text_encoder, cfg.text_max_length)
        g = torch.Generator().manual_seed(0)
        s = cfg.sample_size
        self.x = torch.randn(batch, 3, s, s, generator=g)
        self.images = torch.rand(k, 3, s, s, generator=g) * 2 - 1
        self.captions = [f"a red heart number {i}, twemoji style" for i in range(k)]
        low = None
        if cfg.is_super_resolution:
            r = cfg.low_res_size
            low = torch.randn(batch, 3, r, r, generator=g).clamp(-1, 1)
        text, valid = self.text.encode([PROMPT])
        self.cond = Condition(text=text, text_valid=valid, nbr_feats=self.encode(),
                              nbr_weights=torch.ones(k), low_res=low, aug=cfg.noise_aug_level)

    def encode(self):
        feats = []
        for i, caption in enumerate(self.captions):
            text, valid = self.text.encode([caption])
            feats.append(self.model.encode_neighbours(self.images[i:i + 1], text, valid))
        if not feats:
            return {}
        return {key: torch.cat([f[key] for f in feats]) for key in feats[0]}

    def step(self):
        unet_call(self.model, self.x, STEP_T, self.cond, BRANCHES)


def peak_rss_kib() -> float:
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="a cascade folder (cascade.json)")
    ap.add_argument("--stages", default="", help="stage names, comma-separated (default: all)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--serve", action="store_true")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    hf_logging.disable_progress_bar()  # stderr is the Rust side's progress
    root = pathlib.Path(a.model)
    cascade = json.loads((root / "cascade.json").read_text())
    wanted = [s for s in a.stages.split(",") if s]
    stages = {}
    with torch.inference_mode():
        for st in cascade["stages"]:
            if not wanted or st["name"] in wanted:
                stages[st["name"]] = StageBench(root / st["path"], a.batch, a.k)
        header = {"torch_version": torch.__version__, "threads": torch.get_num_threads()}
        if a.serve:
            print(json.dumps(header), flush=True)
            for line in sys.stdin:
                req = json.loads(line)
                name = req["case"]
                if name == "rss":
                    print(json.dumps({"name": name, "times": [peak_rss_kib()]}), flush=True)
                    continue
                kind, stage = name.split(":", 1)
                run = stages[stage].step if kind == "step" else stages[stage].encode
                times = []
                for _ in range(req["runs"]):
                    s = time.perf_counter()
                    run()
                    times.append(time.perf_counter() - s)
                print(json.dumps({"name": name, "times": times}), flush=True)
            return
        results = []
        for name, st in stages.items():
            st.step()
            times = []
            for _ in range(a.runs):
                s = time.perf_counter()
                st.step()
                times.append(time.perf_counter() - s)
            t = sorted(times)[len(times) // 2]
            results.append({"stage": name, "step_ms_median": t * 1e3, "steps_per_sec": 1 / t,
                            "runs": len(times)})
    if a.json:
        print(json.dumps({**header, "peak_rss_kib": peak_rss_kib(), "steps": results}))
    else:
        print(f"PyTorch {header['torch_version']}, {header['threads']} threads")
        for r in results:
            print(f"{r['stage']:<8} {r['steps_per_sec']:8.2f} steps/s "
                  f"({r['step_ms_median']:.1f} ms)")


if __name__ == "__main__":
    main()
