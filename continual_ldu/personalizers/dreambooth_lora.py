"""DreamBooth-LoRA: low-rank adapters on the UNet's attention projections (peft).

Targets, rank and Gaussian init follow diffusers' ``train_dreambooth_lora.py``; weights are saved
with ``save_lora_weights`` in the diffusers format, so a stock ``StableDiffusionPipeline`` loads
them with ``load_lora_weights``. The adapters live on a copy of the base UNet, so the base model
(and the trajectory that uses it) is never changed.
"""

from __future__ import annotations

import copy
from pathlib import Path

from diffusers import StableDiffusionPipeline
from diffusers.training_utils import cast_training_params
from diffusers.utils import convert_state_dict_to_diffusers, convert_unet_state_dict_to_peft
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict

from continual_ldu.personalizers.base import Personalizer, PersonalizerConfig


class DreamBoothLoRA(Personalizer):
    """LoRA adapters on to_q/to_k/to_v/to_out.0 of a UNet copy."""

    def __init__(self, model, cfg: PersonalizerConfig) -> None:
        super().__init__(model, cfg)
        self.unet = copy.deepcopy(model.unet)
        self.unet.add_adapter(
            LoraConfig(
                r=cfg.rank,
                lora_alpha=cfg.lora_alpha or cfg.rank,
                init_lora_weights="gaussian",
                target_modules=list(cfg.target_modules),
            )
        )
        # Adapters train in fp32 even when the base runs in half precision (diffusers' recipe).
        cast_training_params(self.unet, dtype=self.embedding_dtype())

    @staticmethod
    def embedding_dtype():
        import torch

        return torch.float32

    def lora_state_dict(self) -> dict:
        """The adapters in diffusers' key format."""
        return convert_state_dict_to_diffusers(get_peft_model_state_dict(self.unet))

    def save(self, folder: Path) -> None:
        """``pytorch_lora_weights.safetensors``, loadable by ``load_lora_weights``.

        The adapter config goes into the file's metadata (diffusers' ``lora_adapter_metadata``):
        without it a stock loader assumes ``lora_alpha == rank`` and applies the adapters at the
        wrong scale whenever ``lora_alpha`` is set otherwise.
        """
        StableDiffusionPipeline.save_lora_weights(
            str(folder),
            unet_lora_layers=self.lora_state_dict(),
            unet_lora_adapter_metadata=self.unet.peft_config["default"].to_dict(),
            safe_serialization=True,
        )

    def load(self, folder: Path) -> None:
        state, _ = StableDiffusionPipeline.lora_state_dict(str(folder))
        unet_state = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
        result = set_peft_model_state_dict(
            self.unet, convert_unet_state_dict_to_peft(unet_state), adapter_name="default"
        )
        if getattr(result, "unexpected_keys", None):
            raise ValueError(
                f"{folder}: LoRA keys do not fit this UNet: {result.unexpected_keys[:3]}"
            )
