"""The continual safeguards: a replay buffer of earlier batches and a pool of past attackers.

Both are ``Stateful`` (``state_dict``/``load_state_dict``), so a resumed run sees the same
buffer and pool as an uninterrupted one.
"""

from __future__ import annotations

import torch

from continual_ldu.method.protector import Prepared


class ReplayBuffer:
    """The newest ``capacity`` items: the owner's prepared data and what was published of them.

    The owner replays prepared items in the max step (so rho does not forget earlier uploads);
    the attacker trains on every published latent, new and old (published images stay public).
    """

    FIELDS = ("clean", "start", "reference", "published")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.tensors: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return 0 if not self.tensors else len(self.tensors["clean"])

    def add(self, prepared: Prepared, published: torch.Tensor) -> None:
        new = {"clean": prepared.clean, "start": prepared.start, "published": published}
        if prepared.reference is not None:
            new["reference"] = prepared.reference
        for name, value in new.items():
            # Contiguous, as a checkpoint restores them: a kernel may round differently for
            # another memory layout (e.g. channels-last conv outputs), breaking exact resume.
            value = value.detach().cpu().contiguous()
            joined = torch.cat([self.tensors[name], value]) if name in self.tensors else value
            self.tensors[name] = joined[-self.capacity :] if self.capacity > 0 else joined[:0]

    def sample(self, count: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``count`` items drawn uniformly without replacement (fewer if the buffer is small)."""
        if len(self) == 0 or count <= 0:
            return {}
        index = torch.randperm(len(self), generator=generator)[:count]
        return {name: value[index] for name, value in self.tensors.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: value.contiguous() for name, value in self.tensors.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.tensors = {name: state[name] for name in self.FIELDS if name in state}


class SnapshotPool:
    """Past attackers' trainable parameters; rho must also defeat them."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.snapshots: list[dict[str, torch.Tensor]] = []

    def __len__(self) -> int:
        return len(self.snapshots)

    def add(self, module: torch.nn.Module) -> None:
        if self.capacity <= 0:
            return
        trainable = {
            n: p.detach().cpu().clone() for n, p in module.named_parameters() if p.requires_grad
        }
        self.snapshots = (self.snapshots + [trainable])[-self.capacity :]

    def loss_against(
        self,
        module: torch.nn.Module,
        index: int,
        latents: torch.Tensor,
        generator: torch.Generator,
        num_samples: int,
    ) -> torch.Tensor:
        """The instance loss with snapshot ``index``'s parameters in place of the current ones.

        ``functional_call`` substitutes the tensors without writing into the live parameters,
        which the current attacker's part of the same autograd graph still needs.
        """
        snapshot = {n: v.to(latents.device) for n, v in self.snapshots[index].items()}
        out = torch.func.functional_call(
            module,
            snapshot,
            (latents, generator),
            {"objective": "instance", "num_samples": num_samples},
            strict=False,
        )
        return out["loss"]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            f"{i}/{name}": v for i, snap in enumerate(self.snapshots) for name, v in snap.items()
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        snapshots: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in state.items():
            index, name = key.split("/", 1)
            snapshots.setdefault(int(index), {})[name] = value
        self.snapshots = [snapshots[i] for i in sorted(snapshots)]
