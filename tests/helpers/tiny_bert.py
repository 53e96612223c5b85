"""A tiny BERT and a text dataset for the text tests, made on the spot (no download): a WordPiece tokenizer
trained with the `tokenizers` library on the dataset's own sentences, a 3-layer BertForSequenceClassification
from a BertConfig (3 layers: blocks of three or more are what the activation probe picks by default) "pretrained" as nothing more than its seeded initialisation, both saved with
save_pretrained into one directory, as a model from the hub would be; and train.jsonl / val.jsonl whose
label is the sentiment of the sentence's adjective."""

from __future__ import annotations

import json
import random
from pathlib import Path

POSITIVE = ["great", "wonderful", "superb", "lovely", "brilliant", "excellent"]
NEGATIVE = ["awful", "dreadful", "boring", "terrible", "poor", "dull"]
NOUNS = ["film", "story", "book", "meal", "show", "song", "game", "trip"]
FILLERS = ["really", "quite", "very", "truly", "rather", "so"]


def sentences(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["negative", "positive"])
        adjective = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
        text = f"the {rng.choice(NOUNS)} was {rng.choice(FILLERS)} {adjective}"
        rows.append({"text": text, "label": label})
    return rows


def write_data(root: Path, train: int = 96, val: int = 32) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", sentences(train, 1)), ("val", sentences(val, 2))):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def write_model(root: Path, max_positions: int = 16) -> Path:
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    words = [r["text"] for r in sentences(400, 0)] + [" ".join(POSITIVE + NEGATIVE + NOUNS + FILLERS)]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(words, trainers.WordPieceTrainer(vocab_size=200, special_tokens=special))
    tokenizer = BertTokenizerFast(tokenizer_object=tok, model_max_length=max_positions)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_positions,
        num_labels=3,  # the "pretrained" head: a different task, replaced by the fine-tuning's
    )
    BertForSequenceClassification(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root
