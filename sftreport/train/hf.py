"""Hugging Face text classifiers: `--model hf:MODEL_ID` (a hub id, when the network allows, or a local
directory holding a model saved with `save_pretrained` and its tokenizer).

`AutoModelForSequenceClassification` gets a new head for the dataset's classes (the parameters the
checkpoint did not hold are the new ones). `TextClassifier` wraps it so that it takes a batch of token ids
and returns logits, like every other model here: the attention mask is the ids that are not padding.
The optional extra `sftreport[text]` installs transformers; the core install never imports it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sftreport.errors import UserError, one_line

PREFIX = "hf:"


class TextClassifier(nn.Module):
    def __init__(self, net: nn.Module, pad_id: int, token_names: list[str] | None = None):
        super().__init__()
        self.net = net
        self.pad_id = pad_id
        # the vocabulary, by id: the recorder names the input embedding's rows with it (most moved tokens)
        self.token_names = token_names or []
        get = getattr(net, "get_input_embeddings", None)
        embeddings = get() if callable(get) else None
        self.token_embedding = next((n for n, m in self.named_modules() if m is embeddings), None)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # kept for the attention probe: which tokens are real (its averages leave padding out)
        self.padding_mask = input_ids != self.pad_id
        return self.net(input_ids=input_ids, attention_mask=self.padding_mask.long()).logits


@dataclass
class HFBundle:
    model: TextClassifier
    tokenizer: Any
    head: str
    new_params: set[str]
    weights: str
    max_len: int


def load_hf(model_id: str, num_classes: int, max_tokens: int) -> HFBundle:
    try:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise UserError(
            f"--model {PREFIX}{model_id} needs Hugging Face transformers: pip install 'sftreport[text]'"
        ) from None
    hf_logging.set_verbosity_error()  # its "newly initialized weights" notice: the report says which are new
    local = os.path.isdir(model_id)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id)
        net, info = AutoModelForSequenceClassification.from_pretrained(
            model_id,
            num_labels=num_classes,
            ignore_mismatched_sizes=True,
            output_loading_info=True,
            attn_implementation="eager",  # the attention modules then return their weights (the attention probe)
        )
    except (OSError, ValueError) as e:
        where = "the directory" if local else "the Hugging Face hub (is the network reachable?)"
        raise UserError(
            f"cannot load {PREFIX}{model_id} from {where}: {one_line(e, limit=160)}; a local directory saved with "
            "save_pretrained works offline"
        ) from None
    if tokenizer.pad_token_id is None:
        raise UserError(f"{PREFIX}{model_id}: its tokenizer has no padding token")
    new = {f"net.{k}" for k in (*info.get("missing_keys", ()), *(m[0] for m in info.get("mismatched_keys", ())))}
    vocabulary = [str(t) for t in tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))]
    model = TextClassifier(net, tokenizer.pad_token_id, vocabulary)
    names = {n for n, _ in model.named_parameters()}
    new &= names
    limit = getattr(net.config, "max_position_embeddings", None) or max_tokens
    head = next((n.rpartition(".")[0] for n in sorted(new) if n.endswith(".weight")), "net.classifier")
    return HFBundle(
        model=model,
        tokenizer=tokenizer,
        head=head,
        new_params=new,
        weights=f"Hugging Face {'directory' if local else 'hub model'} {model_id}",
        max_len=min(max_tokens, int(limit)),
    )


class TokenPipeline:
    """The runner's device pipeline for token ids: moved to the device as they are (no augmentation)."""

    def __init__(self, device: torch.device):
        self.device = device

    def eval_batch(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=True)

    def train_batch(self, x: torch.Tensor, aug: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=True)


def load_text_task(cfg: Any) -> tuple[Any, Any]:
    """The text dataset and the Hugging Face model for `--model hf:ID --dataset text --data-root DIR`: the
    classes come from the data, the tokenizer from the model."""
    from sftreport.train.data import DataBundle, choose_probe
    from sftreport.train.models import ModelBundle
    from sftreport.train.text import MAX_TOKENS, class_names, read_split, tokenize

    if not cfg.model.startswith(PREFIX) or cfg.dataset != "text":
        raise UserError(
            "--dataset text needs a Hugging Face text model (--model hf:MODEL_ID), and an hf: model needs "
            f"--dataset text; got --model {cfg.model} with --dataset {cfg.dataset}"
        )
    if cfg.data_root is None:
        raise UserError("--dataset text needs --data-root DIR (holding train.jsonl and val.jsonl, or .csv)")
    train_split, val_split = read_split(cfg.data_root, "train"), read_split(cfg.data_root, "val")
    names, index = class_names(train_split, val_split)
    hf = load_hf(cfg.model[len(PREFIX) :], len(names), MAX_TOKENS)
    train, cut_train = tokenize(train_split, index, hf.tokenizer, hf.max_len)
    val, cut_val = tokenize(val_split, index, hf.tokenizer, hf.max_len)
    truncated = cut_train + cut_val
    data = DataBundle(
        "text",
        names,
        hf.max_len,
        train,
        val,
        hflip=False,
        source=f"{train_split.path.name} and {val_split.path.name} in {cfg.data_root}; "
        + (
            f"{truncated} of {len(train) + len(val)} texts truncated to {hf.max_len} tokens"
            if truncated
            else "none truncated"
        ),
    )
    if len(data.train) < cfg.batch_size:
        raise UserError(f"the training split has {len(data.train)} texts, fewer than --batch-size {cfg.batch_size}")
    if len(data.val) < 2:
        raise UserError(f"the validation split has {len(data.val)} texts; it needs at least 2")
    data.probe = choose_probe(data.val, cfg.record.probe_size, data.num_classes)
    return data, ModelBundle(hf.model, hf.head, hf.new_params, hf.weights)
