"""Builds examples/demo/, the small sample set `reimagen demo` imports: a few held-out entities
(never seen by any shipped model; design.md §6) in all their styles but one, that one kept apart
as the picture the demo should come close to, plus a fixed draw of training entities so that
retrieval has something to tell apart. Files are copied from the emoji dataset (docs/dataset.md)
at 256×256 with their caption sidecars, in the folder layout `import` reads.

    python training/demo_set.py --data ~/.local/share/reimagen/emoji --out examples/demo

Not here: the demo itself (`reimagen demo`, src/demo.rs), the dataset builder.
"""

import argparse
import hashlib
import json
import pathlib
import shutil

# Held-out entities that are recognisable at a glance, and the style each is asked for.
HELD_OUT = {
    "fox": "twemoji", "green apple": "fluent-flat", "sunflower": "openmoji", "rocket": "twemoji",
    "turtle": "fluent-flat", "sailboat": "twemoji", "peach": "openmoji", "tokyo tower": "twemoji",
    "shamrock": "fluent-flat", "rabbit": "twemoji", "automobile": "fluent-flat",
    "closed umbrella": "openmoji",
}
TRAIN_ENTITIES = 36


def rank(name: str) -> bytes:
    return hashlib.blake2b(f"demo:{name}".encode(), digest_size=8).digest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=pathlib.Path, required=True)
    ap.add_argument("--out", type=pathlib.Path, required=True)
    a = ap.parse_args()
    data = a.data.expanduser()
    rows = [json.loads(line) for line in open(data / "manifest.jsonl", encoding="utf-8")]
    rows = [r for r in rows if "256" in r["files"]]
    by_entity: dict[str, list[dict]] = {}
    for r in rows:
        by_entity.setdefault(r["entity"], []).append(r)
    missing = [e for e in HELD_OUT if e not in by_entity]
    if missing:
        raise SystemExit(f"{data}: held-out entities missing from the dataset: {missing}")
    wrong = [e for e in HELD_OUT if by_entity[e][0]["split"] != "heldout"]
    if wrong:
        raise SystemExit(f"not held out in {data}: {wrong}")
    train = sorted((e for e, rs in by_entity.items() if rs[0]["split"] == "train" and len(rs) >= 5),
                   key=rank)[:TRAIN_ENTITIES]
    if a.out.exists():
        shutil.rmtree(a.out)
    targets = []
    copied = 0
    for entity in sorted(HELD_OUT) + sorted(train):
        for r in sorted(by_entity[entity], key=lambda r: r["style"]):
            png = data / r["files"]["256"]
            is_target = HELD_OUT.get(entity) == r["style"]
            dst = a.out / ("targets" if is_target else "kb") / r["slug"] / f"{r['style']}.png"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, dst)
            if is_target:
                targets.append({"entity": entity, "style": r["style"], "slug": r["slug"],
                                "prompt": f"{entity}, {r['style']} style",
                                "target": str(dst.relative_to(a.out))})
            else:
                shutil.copyfile(png.with_suffix(".txt"), dst.with_suffix(".txt"))
            copied += 1
    with open(a.out / "demo.json", "w", encoding="utf-8") as f:
        json.dump({"held_out": targets, "train_entities": sorted(train),
                   "source": "docs/dataset.md (reimagen dataset build), 256×256 renditions"},
                  f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"{copied} images ({len(targets)} targets) of {len(HELD_OUT)} held-out and "
          f"{len(train)} training entities in {a.out}")


if __name__ == "__main__":
    main()
