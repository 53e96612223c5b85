"""Token embeddings of a text model: which tokens' input embedding rows moved most from the pretrained ones.

A model that names its input embedding module and its vocabulary (`token_embedding`, `token_names`, as
sftreport's TextClassifier does) gets, at every epoch end, the rows with the largest relative change
‖e_t − e_0‖ / ‖e_0‖, with their tokens. The weights probe already holds W₀ and the current weights of every
parameter; the rows are read from its buffers, so nothing is copied again.
"""

from __future__ import annotations

import torch
from torch import nn

from sftreport.record.weights import WeightProbe
from sftreport.schema import TokenChange

TOP_TOKENS = 20


def token_embedding(model: nn.Module) -> tuple[str, list[str]] | None:
    """(the embedding weight's parameter name, the vocabulary) of a model that names them, else None."""
    module, names = getattr(model, "token_embedding", None), getattr(model, "token_names", None)
    if not isinstance(module, str) or not names:
        return None
    return f"{module}.weight", list(names)


@torch.no_grad()
def moved_tokens(weights: WeightProbe, param: str, names: list[str], top: int = TOP_TOKENS) -> list[TokenChange]:
    """The `top` rows with the largest relative change, after `weights.measure()` loaded the current weights."""
    if param not in weights.names or weights.sharded:
        return []
    i = weights.names.index(param)
    shape = weights.params[i].shape
    now = weights.now.views[i].view(shape).double()
    ref = weights.ref.views[i].view(shape).double()
    ref_norm = ref.norm(dim=1)
    change = (now - ref).norm(dim=1) / ref_norm.clamp_min(1e-30)
    change = torch.where(ref_norm > 0, change, torch.zeros_like(change))
    k = min(top, len(change))
    values, rows = change.topk(k)
    norms = now.norm(dim=1)
    out = []
    for v, r in zip(values.tolist(), rows.tolist()):
        token = names[r] if r < len(names) else f"#{r}"
        out.append(
            TokenChange(token_id=r, token=token, rel_change=v, norm=float(norms[r]), ref_norm=float(ref_norm[r]))
        )
    return out
