"""Sequence models: recurrent gates recomputed against the module's own output, gate saturation and the
per-gate split of the weight statistics on hand-set weights, attention entropy and change against
nn.MultiheadAttention's own weights; one end-to-end run of each embedded sequence model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from support import cli
from torch import nn

from sftreport.record.attention import AttentionProbe
from sftreport.record.recurrent import GRU_GATES, LSTM_GATES, RecurrentProbe, _recompute, gate_rows
from sftreport.record.weights import WeightProbe
from sftreport.store import read_run


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_the_step_by_step_recomputation_is_the_modules_own_output(cls, batch_first: bool, bidirectional: bool):
    torch.manual_seed(0)
    m = cls(5, 7, num_layers=2, batch_first=batch_first, bidirectional=bidirectional).eval()
    x = torch.randn(3, 6, 5) if batch_first else torch.randn(6, 3, 5)
    layers: dict = {}
    out, top = _recompute(m, x, LSTM_GATES if cls is nn.LSTM else GRU_GATES, layers)
    with torch.no_grad():
        real = m(x)[0]
    assert torch.allclose(out, real, atol=1e-6)
    forward_top = real if not bidirectional else real[..., :7]
    assert torch.allclose(top, forward_top if batch_first else forward_top.transpose(0, 1), atol=1e-6)
    assert sorted(layers) == [(k, d) for k in range(2) for d in range(2 if bidirectional else 1)]


def test_saturation_of_hand_set_gates():
    """Input weights 0, recurrent weights 0: every gate is its bias. Biases +10 (input), −10 (forget),
    0 (cell candidate: tanh 0), +0.5 (output) give saturated shares 1, 1, 0, 0; the cell state
    c_t = sigmoid(10)·0 + ... stays 0, so tanh(c) is never saturated."""
    lstm = nn.LSTM(3, 4, batch_first=True)
    with torch.no_grad():
        for p in lstm.parameters():
            p.zero_()
        lstm.bias_ih_l0.copy_(torch.tensor([10.0] * 4 + [-10.0] * 4 + [0.0] * 4 + [0.5] * 4))
    model = nn.Sequential(lstm)
    probe = RecurrentProbe(["0"])
    x = torch.randn(5, 6, 3)
    with probe.hooks(model), torch.no_grad():
        model(x)
    saturation, hidden = probe.collect(model, want_hidden=True)
    got = {s.gate: s.saturated for s in saturation}
    assert got == {"input": 1.0, "forget": 1.0, "cell": 0.0, "output": 0.0, "cell state": 0.0}
    means = {s.gate: s.mean for s in saturation}
    assert means["output"] == pytest.approx(1 / (1 + math.exp(-0.5)), rel=1e-6)
    assert len(hidden) == 2 and len(hidden[0].values) == 6 and len(hidden[0].values[0]) == 4


def test_a_saturated_tanh_is_counted():
    """Cell-candidate bias +10: tanh(10) > 0.97 everywhere (the cell candidate saturated); input gate
    sigmoid(10) ≈ 1, forget gate sigmoid(0) = 0.5 (not saturated); the cell state grows as
    c_t = 0.5·c_{t−1} + 1·1 → 2 − 2^(1−t), so tanh(c) passes 0.97 (c > 2.09) never: 0; a GRU whose new-gate
    bias is −10 has tanh(−10) saturated likewise."""
    lstm = nn.LSTM(2, 3, batch_first=True)
    with torch.no_grad():
        for p in lstm.parameters():
            p.zero_()
        lstm.bias_ih_l0.copy_(torch.tensor([10.0] * 3 + [0.0] * 3 + [10.0] * 3 + [0.0] * 3))
    gru = nn.GRU(2, 3, batch_first=True)
    with torch.no_grad():
        for p in gru.parameters():
            p.zero_()
        gru.bias_ih_l0[6:].fill_(-10.0)
    for module, expected in (
        (lstm, {"input": 1.0, "forget": 0.0, "cell": 1.0, "output": 0.0, "cell state": 0.0}),
        (gru, {"reset": 0.0, "update": 0.0, "new": 1.0}),
    ):
        model = nn.Sequential(module)
        probe = RecurrentProbe(["0"])
        with probe.hooks(model), torch.no_grad():
            model(torch.randn(4, 5, 2))
        saturation, _ = probe.collect(model, want_hidden=False)
        assert {s.gate: s.saturated for s in saturation} == expected


def test_a_module_given_an_initial_state_or_a_projection_is_not_recomputed():
    proj = nn.Sequential(nn.LSTM(3, 4, proj_size=2, batch_first=True))
    probe = RecurrentProbe(["0"])
    with probe.hooks(proj), torch.no_grad():
        proj(torch.randn(2, 5, 3))
    assert probe.collect(proj, want_hidden=True) == ([], [])


def test_weight_statistics_split_by_gate_see_a_change_in_one_gate_only():
    torch.manual_seed(1)
    model = nn.Sequential(nn.LSTM(3, 4), nn.Linear(4, 2))
    assert gate_rows(model) == {f"0.{k}_l0": LSTM_GATES for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    w0 = model[0].weight_hh_l0.detach().double().numpy().copy()
    probe = WeightProbe(model, set(), bins=8)
    probe.measure()
    delta = torch.randn(4, 4)
    with torch.no_grad():
        model[0].weight_hh_l0[4:8] += delta  # the forget gate's rows
    probe.after_step()
    stats = {w.name: w for w in probe.measure()}
    gates = {g.gate: g for g in stats["0.weight_hh_l0"].gates}
    assert [g.gate for g in stats["0.weight_hh_l0"].gates] == list(LSTM_GATES)
    for k, gate in enumerate(LSTM_GATES):
        rows = w0[4 * k : 4 * k + 4]
        assert gates[gate].ref_sq == pytest.approx(float((rows**2).sum()), rel=1e-6)
        expected = float((delta.double().numpy() ** 2).sum()) if gate == "forget" else 0.0
        assert gates[gate].diff_sq == pytest.approx(expected, rel=1e-6, abs=1e-12)
        assert gates[gate].update_sq == pytest.approx(expected, rel=1e-6, abs=1e-12)  # the step was that change
        assert gates[gate].before_update_sq == pytest.approx(float((rows**2).sum()), rel=1e-6)
    assert sum(g.diff_sq for g in gates.values()) == pytest.approx(stats["0.weight_hh_l0"].diff_sq, rel=1e-6)
    assert stats["1.weight"].gates == []


def test_attention_entropy_and_change_against_the_modules_own_weights():
    """Queries and keys projected to zero attend uniformly (entropy log S exactly); after a change of the
    projections the entropy and the distance to the first pass come from the module's own weights."""
    torch.manual_seed(2)
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight[:16].zero_()  # queries and keys
        mha.in_proj_bias.zero_()
    model = nn.Sequential()
    model.add_module("att", mha)
    x = torch.randn(6, 5, 8)

    def run(first: bool):
        probe_out = probe.hooks(model)
        with probe_out, torch.no_grad():
            out = model[0](x, x, x, need_weights=False)[0]
        return probe.collect(first), out

    probe = AttentionProbe(["att"])
    stats, _ = run(True)
    assert [s.head for s in stats] == [0, 1]
    for s in stats:
        assert s.entropy == pytest.approx(math.log(5), rel=1e-6) and s.max_entropy == pytest.approx(math.log(5))
        assert s.change == 0.0
    p0 = mha(x, x, x, need_weights=True, average_attn_weights=False)[1].detach().double().numpy()
    with torch.no_grad():
        mha.in_proj_weight[:16].normal_()
    stats, out = run(False)
    p = mha(x, x, x, need_weights=True, average_attn_weights=False)[1].detach().double().numpy()
    entropy = -(p * np.log(p)).sum(-1).mean(axis=(0, 2))
    change = 0.5 * np.abs(p[:4] - p0[:4]).sum(-1).mean(axis=(0, 2))  # the first 4 samples
    assert [s.entropy for s in stats] == pytest.approx(entropy.tolist(), rel=1e-5)
    assert [s.change for s in stats] == pytest.approx(change.tolist(), rel=1e-5)
    assert torch.allclose(out, mha(x, x, x)[0], atol=1e-6)  # asking for the weights changed no output


@pytest.mark.slow
@pytest.mark.parametrize("model", ["digits_lstm", "digits_transformer"])
def test_an_embedded_sequence_model_runs_end_to_end(tmp_path, model: str):
    r = cli(
        "run", "--model", model, "--dataset", "digits-seq", "--epochs", "2", "--probe-size", "16", "--quiet",
        "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "r.html"), cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    run = read_run(tmp_path / "run")
    assert run.info.dataset.image_size == 8 and run.info.config["optimizer"] == "adamw"
    last = run.epochs[-1]
    html = (tmp_path / "r.html").read_text()
    if model == "digits_lstm":
        assert {s.gate for s in last.gate_saturation} == {*LSTM_GATES, "cell state"}
        assert [h.sample for h in last.hidden_states] == [0, 1] and len(last.hidden_states[0].values) == 8
        assert all(len(w.gates) == 4 for w in last.weights if w.name.startswith("lstm."))
        for chart in ('"gates"', '"gate-saturation"', '"hidden-states"'):
            assert chart in html
    else:
        assert len(last.attention) == 3 * 4 and all(a.change is not None for a in last.attention)
        assert '"attention"' in html
