"""Weights probe: per parameter tensor, moments, a fixed-bin histogram, the relative change from the
pretrained weights ‖Wₜ−W₀‖/‖W₀‖, and the update-to-weight ratio of one optimizer step.

Three flat buffers of the model's size live on its device: the reference W₀ (taken when the recorder
starts), the weights at the last epoch end (for the one-step update), and a scratch buffer for the
histogram. All statistics of all tensors come back to the host in one transfer per epoch.

Sharded parameters (FSDP2): the buffers hold this process's shards, and the statistics are combined
across processes once per epoch end (see sharded.py), so they are those of the whole tensors; every
process must then call `measure` and `after_step`.

Recurrent layers' weights hold their gates' rows stacked (see recurrent.py): their sums of squares are
also split by gate, from the same squared buffers (a row-block sum each), so that the relative change and
the update ratio of every gate come at almost no cost (not under sharding, whose shards cut across gates).

A resumed run restores W₀ (`load_state_dict`) instead of taking the model as it is: the relative change is
always measured from the pretrained weights, and the histogram bins fixed from them come out the same.
"""

from __future__ import annotations

import torch
from torch import nn

from sftreport.errors import UserError
from sftreport.record.recurrent import gate_rows
from sftreport.record.sharded import is_sharded, locals_of, merge_across, range_across, sum_across
from sftreport.record.stats import (
    BinSpec,
    FlatBuffer,
    aminmax_or_empty,
    histogram_and_zeros,
    moments,
    stats_from_rows,
)
from sftreport.schema import GateStat, WeightStat


class WeightProbe:
    def __init__(self, model: nn.Module, new_params: set[str], bins: int):
        named = list(model.named_parameters())
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.index = {n: i for i, n in enumerate(self.names)}
        self.new = new_params
        self.bins = bins
        self.sharded = is_sharded(model)
        numels = [t.numel() for t in self._locals()]
        device = self.params[0].device
        self.ref = FlatBuffer(numels, device).load(self._locals())
        self.now = FlatBuffer(numels, device)
        self.scratch = FlatBuffer(numels, device)
        self.spec: BinSpec | None = None
        self._update: torch.Tensor | None = None  # (T, 2): update_sq, before_sq of one step
        self._awaiting_update = False
        gates = {} if self.sharded else gate_rows(model)
        self._gated = [(i, gates[n]) for i, n in enumerate(self.names) if n in gates]  # (tensor, its gates)
        self._gate_update: torch.Tensor | None = None  # (G, 2) like _update, per gate
        self._gate_before_sq: torch.Tensor | None = None
        self._gate_ref_sq: torch.Tensor | None = None

    def _gate_sums(self, flats: list[torch.Tensor], minus: list[torch.Tensor] | None = None) -> torch.Tensor | None:
        """(G,) float64 Σx² (or Σ(x − y)², y in `minus`) over each gate's rows, gates of all recurrent tensors
        in order; `flats` as the buffers' views."""
        if not self._gated:
            return None
        rows = [(flats[i] - minus[i] if minus else flats[i]).view(len(g), -1) for i, g in self._gated]
        return torch.cat([r.double().square().sum(1) for r in rows])

    def _locals(self) -> list[torch.Tensor]:
        """The tensors this process holds: each parameter's own shard when sharded, else the parameter."""
        return locals_of(self.params) if self.sharded else list(self.params)

    def reference(self, name: str) -> torch.Tensor:
        """Parameter `name` as it was at epoch 0 (W₀; restored on resume). Not for sharded parameters."""
        i = self.index[name]
        return self.ref.views[i].view(self.params[i].shape)

    def at_epoch_end(self, name: str) -> torch.Tensor:
        """Parameter `name` as it was at the latest epoch end measured. Not for sharded parameters."""
        i = self.index[name]
        return self.now.views[i].view(self.params[i].shape)

    def after_step(self, skipped: torch.Tensor | None = None) -> None:
        """Called after an optimizer step. The first step after an epoch end measures that step's update
        against the weights saved at the epoch end; the other steps cost nothing. A step the optimizer
        skipped (fp16 overflow; one host sync, once per epoch) waits for the next one."""
        if not self._awaiting_update or (skipped is not None and bool(skipped)):
            return
        self._awaiting_update = False
        with torch.no_grad():
            # ‖W_after − W_before‖² read where the weights lie (a copy only of a tensor not in logical order);
            # ‖W_before‖² came with the epoch end's moments
            after = [t.detach().reshape(-1) for t in self._locals()]
            plan = self.now.row_sums_of_all()
            update_sq = plan.square_sums(
                plan.blocks(after), plan.rest(after), self.now.blocks(), plan.rest(self.now.views, self.now.buf)
            )
            self._update = torch.stack([update_sq, self._before_sq], dim=1)
            gate_update = self._gate_sums(after, self.now.views)
            if gate_update is not None and self._gate_before_sq is not None:
                self._gate_update = torch.stack([gate_update, self._gate_before_sq], dim=1)

    @torch.no_grad()
    def load_state_dict(self, reference: dict[str, torch.Tensor]) -> None:
        """Restore W₀ from the model's state_dict as it was at epoch 0, for a run that resumes from a checkpoint:
        the model's weights are those at an epoch end, so the next step's update is measured as after any
        epoch end."""
        for name, view in zip(self.names, self.ref.views):
            saved = reference.get(name)
            if saved is None or saved.numel() != view.numel():
                found = "missing" if saved is None else f"of {saved.numel():,} values, not {view.numel():,}"
                raise UserError(f"the run's reference weights do not fit this model: {name} is {found}")
            view.copy_(saved.reshape(-1))
        self.spec = None  # bins and ‖W₀‖² follow from the restored W₀ at the next measure
        self._moments_before_update(self.now.load(self._locals()))
        self._awaiting_update, self._update = True, None

    def _moments_before_update(self, now: FlatBuffer) -> torch.Tensor:
        """The moments of the weights at an epoch end, keeping Σ W² for the next step's update-to-weight ratio.
        The zeros column is left to `measure`, which counts zeros with the histograms."""
        mom = moments(now, self.scratch, zeros=False)
        self._before_sq = mom[:, 2] + mom[:, 0] * mom[:, 1] ** 2
        self._gate_before_sq = self._gate_sums(now.views)
        return mom

    @torch.no_grad()
    def measure(self) -> list[WeightStat]:
        now, scratch = self.now.load(self._locals()), self.scratch
        if self.spec is None:  # fixed once, from the reference weights: bins and ‖W₀‖²
            mins, maxs = (torch.stack(t) for t in zip(*(aminmax_or_empty(v) for v in self.ref.views)))
            if self.sharded:
                mins, maxs = range_across(mins, maxs)
            self.spec = BinSpec.around(mins.tolist(), maxs.tolist(), self.bins)
            self._ref_sq = self.ref.square_sums()
            self._gate_ref_sq = self._gate_sums(self.ref.views)
        mom = self._moments_before_update(now)  # Σ W², for the next epoch's first update
        diff_sq = now.square_sums(minus=self.ref)  # W_t − W_0 exact where it matters: W_t close to W_0
        gate_diff = self._gate_sums(now.views, self.ref.views)
        update = self._update
        sums = torch.cat([diff_sq[:, None], self._ref_sq[:, None]] + ([update] if update is not None else []), dim=1)
        if self.sharded:  # this process's min/max decide which of its shards need clamping; then combine
            local_range = mom[:, 3:5].tolist()
            counts, zeros = histogram_and_zeros(
                now, scratch, self.spec, [r[0] for r in local_range], [r[1] for r in local_range]
            )
            mom[:, 5] = zeros  # before the rows are merged: zeros add up across processes
            rows = torch.cat([merge_across(mom), sum_across(sums)], dim=1).tolist()
            counts = sum_across(counts)
        else:
            # the floats in one host transfer; their min/max tell the histogram which tensors need clamping
            rows = torch.cat([mom, sums], dim=1).tolist()
            counts, zeros = histogram_and_zeros(now, scratch, self.spec, [r[3] for r in rows], [r[4] for r in rows])
            for row, z in zip(rows, zeros.tolist()):
                row[5] = z
        hists = self.spec.histograms(counts.tolist())
        gates = self._gate_stats(gate_diff, self._gate_update if update is not None else None)
        self._awaiting_update, self._update, self._gate_update = True, None, None
        out = []
        for i, (name, p) in enumerate(zip(self.names, self.params)):
            row = rows[i]
            out.append(
                WeightStat(
                    name=name,
                    module=name.rpartition(".")[0],
                    shape=list(p.shape),
                    trainable=p.requires_grad,
                    new=name in self.new,
                    stats=stats_from_rows([row[:6]])[0],
                    hist=hists[i],
                    diff_sq=row[6],
                    ref_sq=row[7],
                    update_sq=row[8] if update is not None else None,
                    before_update_sq=row[9] if update is not None else None,
                    gates=gates.get(i, []),
                )
            )
        return out

    def _gate_stats(self, diff: torch.Tensor | None, update: torch.Tensor | None) -> dict[int, list[GateStat]]:
        """Per recurrent tensor (by index), its gates' sums (one host transfer for all of them)."""
        if diff is None or self._gate_ref_sq is None:
            return {}
        columns = [diff, self._gate_ref_sq] + ([update[:, 0], update[:, 1]] if update is not None else [])
        rows = torch.stack(columns, dim=1).tolist()
        out: dict[int, list[GateStat]] = {}
        k = 0
        for i, names in self._gated:
            out[i] = []
            for gate in names:
                r = rows[k]
                k += 1
                out[i].append(
                    GateStat(
                        gate=gate,
                        diff_sq=r[0],
                        ref_sq=r[1],
                        update_sq=r[2] if update is not None else None,
                        before_update_sq=r[3] if update is not None else None,
                    )
                )
        return out
