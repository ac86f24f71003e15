"""The frozen text encoder: a CLIP folder (Hugging Face CLIPModel layout + tokenizer.json) whose
text tower's last hidden states (after final_layer_norm) are the generator's text condition.

Tokenisation: tokenizer.json (its post-processor adds <|startoftext|> … <|endoftext|>),
truncated to text_max_length tokens keeping <|endoftext|> last, then padded to text_max_length
(pad id = <|endoftext|>); padded positions get valid = 0 and states set to 0. The text tower is
causal, so a real token's state does not depend on the padding after it: a runtime may run the
tower on the unpadded ids.

Not here: the UNet (model.py).
"""

from __future__ import annotations

import pathlib

import torch
from tokenizers import Tokenizer
from transformers import CLIPTextModel
from transformers.utils import logging as hf_logging


class TextEncoder:
    def __init__(self, folder, max_length: int, device: str = "cpu"):
        folder = pathlib.Path(folder)
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        eos = self.tokenizer.token_to_id("<|endoftext|>")
        if eos is None:
            raise ValueError(f"{folder}/tokenizer.json has no <|endoftext|> token")
        self.tokenizer.enable_truncation(max_length=max_length)
        self.tokenizer.enable_padding(pad_id=eos, pad_token="<|endoftext|>", length=max_length)
        hf_logging.set_verbosity_error()  # the vision tower's tensors are expected leftovers
        self.model = CLIPTextModel.from_pretrained(str(folder)).to(device).eval()
        limit = self.model.config.max_position_embeddings
        if max_length > limit:
            raise ValueError(f"text_max_length {max_length} exceeds {folder}'s {limit} positions")
        self.dim = self.model.config.hidden_size
        self.max_length = max_length
        self.device = device

    def tokenize(self, captions: list[str]):
        enc = self.tokenizer.encode_batch(captions)
        ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
        valid = torch.tensor([e.attention_mask for e in enc], dtype=torch.float32)
        return ids, valid

    @torch.no_grad()
    def encode(self, captions: list[str], batch: int = 256):
        """(states [N, L, D] f32, valid [N, L] f32) with L = text_max_length."""
        states, valids = [], []
        for i in range(0, len(captions), batch):
            ids, valid = self.tokenize(captions[i:i + batch])
            out = self.model(input_ids=ids.to(self.device),
                             attention_mask=valid.long().to(self.device)).last_hidden_state
            states.append(out.float().cpu() * valid[..., None])
            valids.append(valid)
        return torch.cat(states), torch.cat(valids)
