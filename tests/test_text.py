"""Hugging Face text classifiers on data in the real formats (no download): a tiny BERT and a WordPiece
tokenizer made by the test (tests/helpers/tiny_bert.py), train.jsonl / val.jsonl or CSV, and the bad
inputs, each refused in one line with exit 2."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from support import cli

from sftreport.errors import UserError
from sftreport.store import read_run
from sftreport.train.text import class_names, read_split

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from tiny_bert import write_data, write_model

pytest.importorskip("transformers")
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("bert") / "tiny-bert")


def _write(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


@pytest.mark.slow
def test_a_tiny_bert_is_fine_tuned_and_reported(tmp_path: Path, bert: Path):
    data = write_data(tmp_path / "data")
    r = cli(
        "run", "--model", f"hf:{bert}", "--dataset", "text", "--data-root", str(data), "--epochs", "12",
        "--batch-size", "16", "--lr", "0.001", "--probe-size", "16", "--quiet",
        "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "r.html"), cwd=tmp_path, env=OFFLINE,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    run = read_run(tmp_path / "run")
    assert run.info.dataset.classes == ["negative", "positive"] and run.info.dataset.modality == "text"
    assert run.info.dataset.image_size == 16 and "none truncated" in run.info.dataset.source
    first, last = run.epochs[0], run.epochs[-1]
    # genuine fine-tuning: the sentiment is learnt (from the majority class's 62.5 % to at least 90 %)
    assert first.val is not None and last.val is not None
    assert first.val.accuracy == 20 / 32 and last.val.accuracy >= 0.9
    assert {w.name for w in last.weights if w.new} == {"net.classifier.weight", "net.classifier.bias"}
    assert [a.module for a in last.activations] == [f"net.bert.encoder.layer.{i}" for i in range(3)] + [
        "net.classifier"
    ]
    assert len(last.attention) == 3 * 2 and all(0 < a.entropy <= a.max_entropy + 1e-6 for a in last.attention)
    assert all(a.change == 0 for a in first.attention) and any(a.change > 0 for a in last.attention)
    # the embedding rows that moved most are the words that carry the label
    from tiny_bert import NEGATIVE, POSITIVE

    top = [t.token for t in last.tokens[:10]]
    assert len(last.tokens) == 20 and sum(t in POSITIVE + NEGATIVE for t in top) >= 8, top
    html = (tmp_path / "r.html").read_text()
    assert '"tokens"' in html
    assert "96 training / 32 validation texts, at most 16 tokens" in html and '"attention"' in html


def test_labels_integers_or_strings_and_the_refusals(tmp_path: Path):
    ok = _write(tmp_path / "train.jsonl", [{"text": "a", "label": "pos"}, "", {"text": "b", "label": "neg"}])
    val = _write(tmp_path / "val.jsonl", [{"text": "c", "label": "neg"}])
    names, index = class_names(read_split(tmp_path, "train"), read_split(tmp_path, "val"))
    assert names == ["neg", "pos"] and index == {"neg": 0, "pos": 1} and ok.exists() and val.exists()
    (tmp_path / "val.jsonl").unlink()
    (tmp_path / "val.csv").write_text('text,label\n"x, y",1\n\nz,0\n')
    _write(tmp_path / "train.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 2}])
    names, index = class_names(read_split(tmp_path, "train"), read_split(tmp_path, "val"))
    assert names == ["0", "1", "2"] and read_split(tmp_path, "val").texts == ["x, y", "z"]
    cases = [
        ([{"text": "a"}], r"train.jsonl, line 1: no 'label'"),
        ([{"label": 1}], r"train.jsonl, line 1: no 'text'"),
        (["{not json"], r"train.jsonl, line 1: not JSON"),
        ([{"text": "a", "label": 1}, {"text": "b", "label": "x"}], "labels mix integers and strings"),
        ([{"text": "a", "label": [1]}], r"'label' must be an integer or a string, found \[1\]"),
        ([{"text": "a", "label": -1}], "class indices from 0, found -1"),
    ]
    for lines, message in cases:
        _write(tmp_path / "train.jsonl", lines)
        with pytest.raises(UserError, match=message):
            class_names(read_split(tmp_path, "train"), read_split(tmp_path, "val"))
    _write(tmp_path / "train.jsonl", [{"text": "a", "label": 0}])
    with pytest.raises(UserError, match=r"val.csv: example 1 has label 1, which no training example has"):
        class_names(read_split(tmp_path, "train"), read_split(tmp_path, "val"))


@pytest.mark.slow
def test_bad_text_input_is_one_line_and_exit_2(tmp_path: Path, bert: Path):
    data = write_data(tmp_path / "data", train=20, val=8)
    long = write_data(tmp_path / "long", train=20, val=8)
    _write(long / "val.jsonl", [{"text": "the film was " + "very " * 40 + "good", "label": "positive"}] * 4)
    base = ["run", "--epochs", "1", "--batch-size", "4", "--probe-size", "8", "--quiet"]
    cases = [
        (["--model", "hf:no-such-org/no-such-model", "--dataset", "text", "--data-root", str(data)],
         "cannot load hf:no-such-org/no-such-model from the Hugging Face hub"),
        (["--model", f"hf:{bert}", "--dataset", "digits"], "--dataset text needs a Hugging Face text model"),
        (["--model", "resnet18", "--dataset", "text", "--data-root", str(data)], "an hf: model needs --dataset text"),
        (["--model", f"hf:{bert}", "--dataset", "text", "--data-root", str(tmp_path / "none")], "neither"),
    ]  # fmt: skip
    for args, message in cases:
        r = cli(*base, *args, "--run-dir", str(tmp_path / "r"), cwd=tmp_path, env=OFFLINE)
        assert r.returncode == 2, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr
        assert not (tmp_path / "r").exists()
    r = cli(*base, "--model", f"hf:{bert}", "--dataset", "text", "--data-root", str(long), "--run-dir",
            str(tmp_path / "long-run"), cwd=tmp_path, env=OFFLINE)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "4 of 24 texts truncated to 16 tokens" in read_run(tmp_path / "long-run").info.dataset.source
    assert os.path.isdir(bert)


def test_moved_tokens_are_the_rows_that_changed_most_by_hand():
    import torch
    from torch import nn

    from sftreport.record.tokens import moved_tokens, token_embedding
    from sftreport.record.weights import WeightProbe

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(6, 4)
            self.fc = nn.Linear(4, 2)
            self.token_embedding, self.token_names = "embed", ["[PAD]", "a", "b", "c", "d", "e"]

    torch.manual_seed(0)
    model = Tiny()
    e0 = model.embed.weight.detach().double().clone()
    probe = WeightProbe(model, set(), bins=8)
    probe.measure()
    with torch.no_grad():
        model.embed.weight[2] *= 3  # row b: relative change 2
        model.embed.weight[4] += 0.5 * model.embed.weight[4].norm() / 2  # row d: 0.5 / 2 · ‖d‖ per entry × 2
    probe.measure()
    param, names = token_embedding(model)
    got = moved_tokens(probe, param, names, top=3)
    now = model.embed.weight.detach().double()
    expected = ((now - e0).norm(dim=1) / e0.norm(dim=1)).tolist()
    assert [t.token for t in got][:2] == ["b", "d"] and got[2].rel_change == 0.0
    assert got[0].rel_change == pytest.approx(2.0, rel=1e-6) and got[1].rel_change == pytest.approx(
        expected[4], rel=1e-6
    )
    assert got[0].norm == pytest.approx(float(now[2].norm()), rel=1e-6) and got[0].ref_norm == pytest.approx(
        float(e0[2].norm()), rel=1e-6
    )
