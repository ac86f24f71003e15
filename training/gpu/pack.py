"""Packs the emoji dataset's train split small enough to travel with the source tree to a GPU
machine that has no network, and unpacks it there into the layout the trainers read.

    python training/gpu/pack.py pack --data ~/.local/share/reimagen/emoji --out .gpu-pack
    python training/gpu/pack.py unpack --pack .gpu-pack --out /tmp/emoji

The pack holds only `split == "train"` renditions (held-out entities never leave this machine,
design.md §6) and their manifest, neighbour and entity records, all in one gzipped tar. Images
are lossless WebP (a 256×256 emoji is ~3 KB against ~10 KB as the builder's PNG). A rendition
that has a 256 file travels at 256 only; unpacking derives its 64 by a 4×4 box average (what the
trainers' own `load_image` does when sizes differ), so only the 64-only sets (noto) travel at 64.
The whole train split is about 40 MiB.

Not here: training (train_reimagen.py), the device script that calls this (run_gpu.sh).
"""

import argparse
import io
import json
import pathlib
import sys
import tarfile
import time

from PIL import Image

PACK = "pack.tar.gz"


def read_jsonl(path: pathlib.Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def jsonl_bytes(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def with_suffix(path: str, suffix: str) -> str:
    if not path.endswith(".png"):
        raise SystemExit(f"manifest file {path!r} is not a .png rendition")
    return path[: -len(".png")] + suffix


def pack(data: pathlib.Path, out: pathlib.Path) -> None:
    manifest = [m for m in read_jsonl(data / "manifest.jsonl") if m["split"] == "train"]
    if not manifest:
        raise SystemExit(f"{data / 'manifest.jsonl'}: no train-split renditions")
    ids = {m["id"] for m in manifest}
    entities = {m["entity"] for m in manifest}
    neighbours = [n for n in read_jsonl(data / "neighbours.jsonl") if n["id"] in ids]
    leaked = [n["id"] for n in neighbours if any(x not in ids for x in n["neighbours"])]
    if leaked:
        raise SystemExit(f"neighbours.jsonl: {len(leaked)} train examples name a non-train "
                         f"neighbour (first: {leaked[0]}); rebuild the neighbours")
    out.mkdir(parents=True, exist_ok=True)
    t0, raw, packed, rows = time.time(), 0, 0, []
    with tarfile.open(out / PACK, "w:gz", compresslevel=9) as tar:
        for n, m in enumerate(manifest):
            files, derived = {}, {}
            for size, png in sorted(m["files"].items()):
                if size == "64" and "256" in m["files"]:
                    files[size] = png  # derived from the 256 file on unpack
                    derived[size] = "256"
                    continue
                with Image.open(data / png) as im:
                    buf = io.BytesIO()
                    im.convert("RGB").save(buf, "WEBP", lossless=True, method=6)
                raw += (data / png).stat().st_size
                packed += buf.tell()
                files[size] = with_suffix(png, ".webp")
                add_bytes(tar, files[size], buf.getvalue())
            rows.append({**m, "files": files, **({"derived": derived} if derived else {})})
            if n % 1000 == 0:
                print(f"pack: {n}/{len(manifest)} renditions", file=sys.stderr)
        add_bytes(tar, "manifest.jsonl", jsonl_bytes(rows))
        add_bytes(tar, "neighbours.jsonl", jsonl_bytes(neighbours))
        ent_path = data / "entities.jsonl"
        if ent_path.exists():
            add_bytes(tar, "entities.jsonl",
                      jsonl_bytes([e for e in read_jsonl(ent_path) if e["entity"] in entities]))
    (out / "pack.json").write_text(json.dumps({
        "source": str(data), "renditions": len(rows), "png_bytes": raw, "webp_bytes": packed,
        "pack_bytes": (out / PACK).stat().st_size}, indent=1) + "\n")
    print(f"packed {len(rows)} train renditions in {time.time() - t0:.0f}s: {raw / 2**20:.1f} MiB "
          f"of PNG -> {(out / PACK).stat().st_size / 2**20:.1f} MiB in {out / PACK}")


def unpack(pack_dir: pathlib.Path, out: pathlib.Path) -> None:
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(pack_dir / PACK) as tar:
        tar.extractall(out, filter="data")
    rows = read_jsonl(out / "manifest.jsonl")
    made = 0
    for m in rows:
        for size, source in m.get("derived", {}).items():
            dst = out / m["files"][size]
            dst.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(out / m["files"][source]) as im:
                s = int(size)
                im.convert("RGB").resize((s, s), Image.Resampling.BOX).save(dst, compress_level=1)
            made += 1
    print(f"unpacked {len(rows)} renditions ({made} derived 64s) into {out} "
          f"in {time.time() - t0:.0f}s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--data", type=pathlib.Path, required=True)
    p.add_argument("--out", type=pathlib.Path, required=True)
    p = sub.add_parser("unpack")
    p.add_argument("--pack", type=pathlib.Path, required=True)
    p.add_argument("--out", type=pathlib.Path, required=True)
    a = ap.parse_args()
    if a.cmd == "pack":
        pack(a.data.expanduser(), a.out)
    else:
        unpack(a.pack, a.out)


if __name__ == "__main__":
    main()
