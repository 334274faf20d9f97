"""Distribution on accelerate: single process, DDP (gloo on CPU), DeepSpeed ZeRO for the attacker.

The algorithm code never sees ranks. This module wraps the two players:
  - the generator (rho) and its optimizer: ``accelerator.prepare`` (DDP when world_size > 1);
  - the attacker (the personalizer): the same, or, when the launch config selects DeepSpeed, a
    ``deepspeed.initialize`` engine built from the accelerate plugin's DeepSpeed config (ZeRO-2).
The known hazard of two engines: the max step backpropagates through the attacker into rho. The
trainer freezes the attacker's parameters during the max step and calls the *unwrapped* attacker
there, so no DDP/ZeRO gradient hook of the attacker fires; the min step sees detached images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs, broadcast_object_list


@dataclass
class DistributedConfig:
    """Precision and memory switches for GPU runs (the launch config picks the topology)."""

    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False


def build_accelerator(cfg: DistributedConfig) -> Accelerator:
    """An Accelerator; on CPU the process group uses gloo (NCCL needs GPUs)."""
    on_cpu = not torch.cuda.is_available()
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1  # set by accelerate launch / torchrun
    # Naming a backend in a single process makes accelerate expect a process group: only when launched.
    handlers = [InitProcessGroupKwargs(backend="gloo")] if on_cpu and launched else []
    # accelerate turns DeepSpeed off when told cpu=True; DeepSpeed runs on CPU by itself (gloo).
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    return Accelerator(
        cpu=on_cpu and not deepspeed,
        mixed_precision=cfg.mixed_precision,
        kwargs_handlers=handlers,
    )


class Distributed:
    """Rank facts and collective helpers around one Accelerator."""

    def __init__(self, cfg: DistributedConfig) -> None:
        self.cfg = cfg
        self.accelerator = build_accelerator(cfg)

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def uses_deepspeed(self) -> bool:
        return self.accelerator.distributed_type == DistributedType.DEEPSPEED

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def broadcast(self, value):
        """Rank 0's value on every rank (any picklable object)."""
        if self.world_size == 1:
            return value
        box = [value]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on at least one."""
        if self.world_size == 1:
            return flag
        tensor = torch.tensor([float(flag)], device=self.device)
        return bool(self.accelerator.reduce(tensor, reduction="sum").item() > 0)

    def mean(self, value: float) -> float:
        """The mean of a float over ranks (e.g. the budget overrun that drives lambda)."""
        if self.world_size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        return float(self.accelerator.reduce(tensor, reduction="mean"))

    def prepare_generator(self, net: torch.nn.Module, optimizer: torch.optim.Optimizer):
        """rho under DDP (or as is in one process)."""
        if self.uses_deepspeed:  # accelerate would make rho a second DeepSpeed engine
            net = net.to(self.device)
            if self.world_size > 1:
                net = torch.nn.parallel.DistributedDataParallel(net)
            return net, optimizer
        return self.accelerator.prepare(net, optimizer)

    def backward_generator(self, loss: torch.Tensor) -> None:
        """Backward for rho's loss (under DeepSpeed, accelerate's backward belongs to its engine)."""
        if self.uses_deepspeed:
            loss.backward()
        else:
            self.accelerator.backward(loss)

    def unwrap(self, module: torch.nn.Module) -> torch.nn.Module:
        return getattr(module, "module", module)


class AttackerRunner:
    """The attacker's update step, on DDP/plain AdamW or on a DeepSpeed engine."""

    def __init__(
        self, dist: Distributed, personalizer: torch.nn.Module, lr: float, weight_decay: float
    ) -> None:
        self.dist, self.personalizer = dist, personalizer
        params = personalizer.trainable_parameters()
        if dist.uses_deepspeed:
            self.engine, self.optimizer = self._deepspeed(params, lr, weight_decay)
        else:
            optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
            self.engine, self.optimizer = dist.accelerator.prepare(personalizer, optimizer)

    def _deepspeed(self, params, lr: float, weight_decay: float):
        import deepspeed

        plugin = self.dist.accelerator.state.deepspeed_plugin
        config = dict(plugin.deepspeed_config)
        # "auto" values are resolved by accelerate only for models it prepares itself.
        config["train_micro_batch_size_per_gpu"] = 1
        config["gradient_accumulation_steps"] = 1
        config["train_batch_size"] = self.dist.world_size
        config.pop("scheduler", None)
        config.setdefault("zero_allow_untested_optimizer", True)
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        engine, optimizer, _, _ = deepspeed.initialize(
            model=self.personalizer,
            optimizer=optimizer,
            config=config,
            model_parameters=params,
            dist_init_required=False,
        )
        return engine, optimizer

    def step(self, latents: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One inner-min step on (detached) published latents; returns the loss terms."""
        losses = self.engine(latents, generator)
        if self.dist.uses_deepspeed:
            self.engine.backward(losses["loss"])
            self.engine.step()
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.dist.accelerator.backward(losses["loss"])
            self.optimizer.step()
        return {k: v.detach() for k, v in losses.items()}

    def save_state(self, folder) -> None:
        """Optimizer state (DeepSpeed writes its own per-rank ZeRO shards)."""
        if self.dist.uses_deepspeed:
            self.engine.save_checkpoint(str(folder), tag="attacker", exclude_frozen_parameters=True)
        elif self.dist.is_main:
            torch.save(self.optimizer.state_dict(), os.path.join(folder, "attacker_optimizer.pt"))

    def load_state(self, folder) -> None:
        if self.dist.uses_deepspeed:
            self.engine.load_checkpoint(str(folder), tag="attacker", load_module_strict=False)
        else:
            state = torch.load(os.path.join(folder, "attacker_optimizer.pt"), weights_only=False)
            self.optimizer.load_state_dict(state)
