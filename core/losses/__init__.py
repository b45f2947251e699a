"""Full-catalog losses behind one signature: ``loss(e, c, targets) -> scalar``.

Notation follows the CCE paper: ``e`` (N, D) hidden states, ``c`` (V, D) catalog (item)
embeddings, ``targets`` (N,) item ids in [0, V) or ``IGNORE_INDEX``. Every loss is the mean
negative log-likelihood over non-ignored targets, so swapping losses is one gin line
(``train.loss_fn = @cce``) and never a string switch inside the model. Names come from
``loss_name`` (``core.losses.registry``), never from a free label.

Importing this package imports no triton: CUDA kernels load on their first call.
"""

from core.losses.cce import autocast_operands, cce
from core.losses.ce import ce
from core.losses.flash_ce import flash_ce
from core.losses.flex import flex_ce
from core.losses.registry import (
    IGNORE_INDEX,
    LOSSES,
    LossFacts,
    bind_to_data,
    loss_facts,
    loss_name,
    loss_ran,
    loss_settings,
    register,
)
from core.losses.sampled import sampled_ce

__all__ = ["IGNORE_INDEX", "LOSSES", "LossFacts", "autocast_operands", "bind_to_data", "ce", "cce", "flash_ce",
           "flex_ce", "loss_facts", "loss_name", "loss_ran", "loss_settings", "register", "sampled_ce"]
