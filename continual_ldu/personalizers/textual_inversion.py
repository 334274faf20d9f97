"""Textual Inversion: learn one new token's embedding; nothing else changes.

The placeholder token is added to the tokenizer and its row initialised from
``initializer_token`` (the diffusers example). Rather than training the whole embedding matrix
and restoring the other rows after each step (as the example does, which AdamW's weight decay
would otherwise break), the learned row is its own parameter, spliced into the embedding output
by a forward hook, and written into the matrix only by ``sync_embedding``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from continual_ldu.personalizers.base import Personalizer, PersonalizerConfig


class TextualInversion(Personalizer):
    """One learned embedding row for ``placeholder_token``."""

    def __init__(self, model, cfg: PersonalizerConfig) -> None:
        super().__init__(model, cfg)
        tokenizer, encoder = model.tokenizer, model.text_encoder
        if cfg.placeholder_token not in tokenizer.get_vocab():
            tokenizer.add_tokens([cfg.placeholder_token])
            encoder.resize_token_embeddings(len(tokenizer))
        self.token_id = tokenizer.convert_tokens_to_ids(cfg.placeholder_token)
        init_ids = tokenizer.encode(cfg.initializer_token, add_special_tokens=False)
        if len(init_ids) != 1:
            raise ValueError(
                f"surrogate.initializer_token {cfg.initializer_token!r} must be a single token"
            )
        table = encoder.get_input_embeddings()
        self.embedding = nn.Parameter(table.weight[init_ids[0]].detach().clone().float())
        self.sync_embedding()
        self._hook = table.register_forward_hook(self._splice)

    @property
    def prompt(self) -> str:
        return self.cfg.instance_prompt.format(token=self.cfg.placeholder_token)

    def _splice(self, module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor):
        """Replace the placeholder's positions with the learned embedding (keeps its gradient)."""
        mask = (inputs[0] == self.token_id).unsqueeze(-1)
        return torch.where(mask, self.embedding.to(output.dtype), output)

    @torch.no_grad()
    def sync_embedding(self) -> None:
        """Write the learned row into the text encoder's table (for saving and stock pipelines)."""
        table = self.base.text_encoder.get_input_embeddings().weight
        table[self.token_id] = self.embedding.to(table.dtype)

    def save(self, folder: Path) -> None:
        """``learned_embeds.safetensors`` in the diffusers format (``load_textual_inversion``)."""
        folder.mkdir(parents=True, exist_ok=True)
        self.sync_embedding()
        tensors = {self.cfg.placeholder_token: self.embedding.detach().cpu()[None]}
        save_file(tensors, str(folder / "learned_embeds.safetensors"))

    def load(self, folder: Path) -> None:
        tensors = load_file(str(folder / "learned_embeds.safetensors"))
        with torch.no_grad():
            self.embedding.copy_(tensors[self.cfg.placeholder_token][0])
        self.sync_embedding()
