"""Trainer contracts: how each trainer reads a training JSON, as the rules the ready-to-train check applies.

One module per trainer, each citing the code it follows; `CONTRACTS` names them for recipes and `verify --contract`.
"""

from mgdata.contracts.base import IMAGE_TOKEN, ROLES, Contract, Rules, Sample
from mgdata.contracts.llava import LLAVA_PLAIN, LLAVA_V1
from mgdata.contracts.mgllava import MGLLAVA

__all__ = [
    "CONTRACTS",
    "IMAGE_TOKEN",
    "LLAVA_PLAIN",
    "LLAVA_V1",
    "MGLLAVA",
    "ROLES",
    "Contract",
    "Rules",
    "Sample",
]

CONTRACTS: dict[str, Contract] = {c.name: c for c in (MGLLAVA, LLAVA_PLAIN, LLAVA_V1)}
