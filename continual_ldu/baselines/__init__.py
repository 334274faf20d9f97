"""The baseline catalog: the published pixel-space protections, one file each, on one PGD engine.

Every entry takes images in [-1, 1] and returns them protected on the 8-bit grid within its L-inf
budget (``Baseline.protect``); ``BaselineConfig(name=...)`` with nothing else set is the peer as
published (budgets converted to x/255 of [0, 1]; each module's docstring cites its source).
"""

from __future__ import annotations

from typing import get_args

from continual_ldu.baselines.advdm import AdvDM
from continual_ldu.baselines.anti_dreambooth import ASPL, FSMG, ASPLLoRA
from continual_ldu.baselines.base import Baseline, BaselineConfig, BaselineName
from continual_ldu.baselines.caat import CAAT
from continual_ldu.baselines.metacloak import MetaCloak
from continual_ldu.baselines.mist import Mist
from continual_ldu.baselines.photoguard import PhotoGuard
from continual_ldu.baselines.pid import PID
from continual_ldu.baselines.sds import SDS, SDSMinus
from continual_ldu.baselines.simac import SimAC

BASELINES: dict[str, type[Baseline]] = {
    "advdm": AdvDM,
    "fsmg": FSMG,
    "aspl": ASPL,
    "aspl_lora": ASPLLoRA,
    "photoguard": PhotoGuard,
    "mist": Mist,
    "sds": SDS,
    "sds_minus": SDSMinus,
    "pid": PID,
    "metacloak": MetaCloak,
    "simac": SimAC,
    "caat": CAAT,
}
assert set(BASELINES) == set(get_args(BaselineName)), "BaselineName and BASELINES disagree"


def build_baseline(cfg: BaselineConfig, model) -> Baseline:
    """Validate ``cfg`` and instantiate the named baseline around a loaded base model."""
    problems = (
        cfg.validate() if cfg.name else ["name: which baseline? one of " + ", ".join(BASELINES)]
    )
    if problems:
        raise ValueError(f"invalid baseline config: {'; '.join(problems)}")
    return BASELINES[cfg.name](model, cfg)


__all__ = ["BASELINES", "Baseline", "BaselineConfig", "BaselineName", "build_baseline"]
