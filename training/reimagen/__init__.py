"""The PyTorch reference of the Re-Imagen generator (docs/generator.md is its spec).

- `model`: the retrieval-conditioned UNet (DStack, neighbour attention, UStack) and its config.
- `schedule`: β schedules, DDPM / DDIM / DPM-Solver++ 2M steps, x̂₀ clipping and thresholding.
- `guidance`: joint, standard CFG, the paper's ε̂_p / ε̂_n, interleaved and weighted guidance,
  with every branch batched into one UNet call; `sample` runs a whole stage.
- `export`: f16 safetensors shards (≤ 15 MB) + index + config.json, and loading them back.
- `text`: the frozen CLIP text tower that turns captions into token states.

Not here: the trainer (training/train_reimagen.py) and the fixture generator
(training/reimagen_fixtures.py).
"""
