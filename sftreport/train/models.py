"""The model zoo: build a torchvision classifier by name, load pretrained weights, replace the head, freeze.

Every model follows one path: build it without weights, replace its classifier head for the target
classes, then load the pretrained state_dict without the old head. The head's parameters are the new
ones; every other parameter must be found in the weights, or the load fails with one clear line.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import torch
from torch import nn

from sftreport.errors import UserError, one_line
from sftreport.record.architecture import classifier_head
from sftreport.train.digits_resnet import DigitsResNet
from sftreport.train.digits_seq import DigitsLSTM, DigitsTransformer
from sftreport.train.imagenet import IMAGENET_CLASSES, imagenet_categories
from sftreport.train.strategies import frozen_modules

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

DIGITS_MODEL = "digits_resnet"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model sftreport pretrains itself on digits 0–4 (`sftreport pretrain --model NAME`) and ships."""

    build: type[nn.Module]
    image_size: int  # the input side it reads
    what: str  # how it reads the digits, in words

    def weights_file(self, name: str) -> str:
        return f"{name}_0to4.pt"  # inside the package, in sftreport/train/weights/


EMBEDDED = {
    DIGITS_MODEL: EmbeddedModel(DigitsResNet, 32, "a small ResNet"),
    "digits_lstm": EmbeddedModel(DigitsLSTM, 8, "a 2-layer LSTM reading each image's 8 rows as time steps"),
    "digits_transformer": EmbeddedModel(
        DigitsTransformer, 8, "a 3-layer Transformer encoder reading each image's 8 rows as tokens"
    ),
}
DIGITS_WEIGHTS_FILE = EMBEDDED[DIGITS_MODEL].weights_file(DIGITS_MODEL)


@dataclass
class SourceHead:
    """The pretrained classifier head, kept aside when the new one replaced it: with the backbone it measures
    the task the model was pretrained for (forgetting)."""

    module: nn.Module
    classes: int  # its outputs
    categories: list[str] | None  # the name of each output when the weights say (torchvision's meta)
    image_size: int  # the input side the weights were trained at
    imagenet: bool = False  # outputs in ImageNet-1k's order (synset ids name them too)


@dataclass
class ModelBundle:
    model: nn.Module
    head: str  # name of the classifier module that was replaced
    new_params: set[str]  # parameter names not loaded from pretrained weights
    weights: str  # what was loaded, in words
    source_head: SourceHead | None = field(default=None)  # None: no pretrained head in the weights


def default_image_size(name: str) -> int | None:
    """The input side a model needs whatever the dataset (None: the dataset's own size works)."""
    if name in EMBEDDED:
        return EMBEDDED[name].image_size
    return 224 if name.startswith(("vit_", "swin", "maxvit")) else None


def build_model(name: str, weights: str, num_classes: int) -> ModelBundle:
    if name in EMBEDDED:
        model: nn.Module = EMBEDDED[name].build()
    else:
        import torchvision  # a second to import: only for the models that need it

        if name not in torchvision.models.list_models(module=torchvision.models):
            raise UserError(
                f"unknown model {name!r}: use a torchvision classification model "
                f"(e.g. resnet50, vit_b_16) or one of sftreport's own: {', '.join(EMBEDDED)}"
            )
        kwargs = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    original = copy.deepcopy(model.get_submodule(classifier_head(model)))
    head = replace_head(model, num_classes)
    new = {n for n, _ in model.named_parameters() if n == head or n.startswith(head + ".")}
    state, described, meta = _pretrained_state(name, weights)
    if state is None:
        return ModelBundle(model, head, {n for n, _ in model.named_parameters()}, described)
    _load_backbone(model, state, head, described)
    return ModelBundle(model, head, new, described, _source_head(original, state, head, name, meta))


def _source_head(
    original: nn.Module, state: dict[str, torch.Tensor], head: str, name: str, meta: dict
) -> SourceHead | None:
    """The pretrained head from the weights (None when they hold none that fits the model's own head)."""
    own = {k: v for k, v in state.items() if k.startswith(head + ".")}
    expected = original.state_dict()
    tensors = {k.removeprefix(head + "."): v for k, v in own.items()}
    if set(tensors) != set(expected) or any(tensors[k].shape != expected[k].shape for k in expected):
        return None
    original.load_state_dict(tensors)
    original.requires_grad_(False)
    classes = int(getattr(original, "out_features", 0) or getattr(original, "out_channels", 0))
    categories = meta.get("categories")
    if name in EMBEDDED and meta.get("embedded"):
        categories = [str(c) for c in range(classes)]
    imagenet = classes == IMAGENET_CLASSES and (categories is None or categories == imagenet_categories())
    if categories is None and imagenet:  # a weights file with a 1000-class head: torchvision's ImageNet order
        categories = imagenet_categories()
    size = meta.get("image_size") or (EMBEDDED[name].image_size if name in EMBEDDED else 224)
    return SourceHead(
        original, classes, categories if categories and len(categories) == classes else None, size, imagenet
    )


def replace_head(model: nn.Module, num_classes: int) -> str:
    """Swap the final classifier (the last Linear, or 1×1 Conv for SqueezeNet, producing the logits) for
    a fresh one with `num_classes` outputs; return its module name."""
    name = classifier_head(model)
    old = model.get_submodule(name)
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        assert isinstance(old, nn.Conv2d), "classifier_head finds a Linear or a Conv2d"
        (kh, kw), (sh, sw) = old.kernel_size, old.stride  # 2-tuples (typed tuple[int, ...])
        new = nn.Conv2d(old.in_channels, num_classes, kernel_size=(kh, kw), stride=(sh, sw))
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)
    return name


def _pretrained_state(name: str, weights: str) -> tuple[dict[str, torch.Tensor] | None, str, dict]:
    """The weights' state_dict, what they are in words, and what is known of their head: `categories` (a
    torchvision weights enum's class names), `image_size` (the size it was trained at), `embedded`."""
    if weights.lower() == "none":
        return None, "none (random initialisation)", {}
    if names_a_file(weights):
        path = Path(weights).expanduser()
        return _load_file(path), f"file {path}", {}
    if name in EMBEDDED:
        if weights.upper() != "DEFAULT":
            raise UserError(f"{name} has one set of weights, DEFAULT (or none, or a file path), not {weights!r}")
        ref = resources.files("sftreport.train").joinpath("weights", EMBEDDED[name].weights_file(name))
        with resources.as_file(ref) as p:
            if not p.exists():
                raise UserError(
                    f"the embedded weights {p} are missing: rebuild them with `sftreport pretrain --model {name}`"
                )
            return _load_file(p), f"sftreport's {name}, pretrained on digits 0–4", {"embedded": True}
    w = torchvision_weights(name, weights)
    file = cached_weights(w)
    try:
        state = w.get_state_dict(progress=False, check_hash=False)  # from the cache: no download
    except Exception as e:
        raise UserError(
            f"cannot read {file} ({type(e).__name__}: {one_line(e)}): delete it to download it again"
        ) from None
    crop = getattr(w.transforms(), "crop_size", None)
    meta = {"categories": w.meta.get("categories"), "image_size": int(crop[0]) if crop else None}
    return state, f"torchvision {type(w).__name__}.{w.name}", meta


def names_a_file(weights: str) -> bool:
    """--weights names a state_dict file (rather than none, DEFAULT or a weights enum member's name)."""
    path = Path(weights).expanduser()
    return path.suffix in (".pt", ".pth", ".bin", ".ckpt") or path.exists() or "/" in weights


def torchvision_weights(name: str, weights: str) -> WeightsEnum:
    """The member of torchvision model `name`'s weights enum that `weights` names: DEFAULT or a member's name."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(name)
        return enum[weights] if weights != "DEFAULT" else enum.DEFAULT
    except (KeyError, ValueError):
        names = ", ".join(["DEFAULT", *(w.name for w in torchvision.models.get_model_weights(name))])
        raise UserError(f"unknown weights {weights!r} for {name}: one of {names}, none, or a file path") from None


def cached_weights(w: WeightsEnum) -> Path:
    """The file of torchvision weights `w` in torch.hub's cache, where torchvision reads them from: downloaded
    there first if missing. With no network: one line naming the file and the cache folder."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    file = folder / Path(urlparse(w.url).path).name  # the name torch.hub.load_state_dict_from_url caches under
    if file.is_file():
        return file
    try:
        folder.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(w.url, str(file), progress=False)
    except Exception as e:
        raise UserError(
            f"cannot download {type(w).__name__}.{w.name} ({type(e).__name__}: {e}); with no network, "
            f"put {file.name} in {folder} or pass --weights FILE"
        ) from None
    sys.stderr.write(f"downloaded {w.url} to {file}\n")
    return file


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = one_line(e).split(". ")[0]
        raise UserError(f"cannot read weights file {path} with torch.load(weights_only=True): {first}") from None
    for key in ("state_dict", "model", "model_state_dict"):  # common checkpoint wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"weights file {path} does not hold a state_dict (a dict of tensors)")
    # DataParallel/DDP checkpoints prefix every key with "module."
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj


def _load_backbone(model: nn.Module, state: dict[str, torch.Tensor], head: str, described: str) -> None:
    """Load everything but the head (and Inception's or GoogLeNet's auxiliary classifiers); every backbone
    tensor must be present with the right shape."""
    body = {k: v for k, v in state.items() if not k.startswith("AuxLogits.") and not k.startswith("aux")}
    load_all_but_heads(model, body, [head], f"weights {described} do not fit {type(model).__name__}")


def load_all_but_heads(model: nn.Module, state: dict[str, torch.Tensor], heads: list[str], context: str) -> None:
    """Load every tensor of `model` but the heads' from `state`; the pretrained classes' heads are dropped.
    Anything missing, unexpected or of the wrong shape stops the build with one line."""
    in_head = tuple(h + "." for h in heads)
    body = {k: v for k, v in state.items() if not k.startswith(in_head)}
    own = model.state_dict()
    missing = [k for k in own if k not in body and not k.startswith(in_head)]
    unexpected = [k for k in body if k not in own]
    wrong = [k for k in body if k in own and body[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{what} {len(keys)} (e.g. {keys[0]})"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise UserError(f"{context}: {detail}")
    model.load_state_dict(body, strict=False)


def apply_strategy(
    model: nn.Module,
    strategy: str,
    head: str,
    head_params: set[str] | None = None,
    builder_frozen: frozenset[str] = frozenset(),
) -> list[str]:
    """Set requires_grad per the strategy; return the names of fully frozen modules (kept in eval mode).

    `head_params` are the parameters of the heads built fresh for the dataset (a detector's box predictor, or
    the digit detector's RPN and ROI heads; a segmenter's classifier and aux classifier; default: those of
    `head`): `linear-probe` trains exactly these, and no `freeze-until` may reach them. `builder_frozen` are
    the parameters the model's builder froze (torchvision's `trainable_backbone_layers`): they stay frozen
    whatever the strategy."""
    names = [n for n, _ in model.named_parameters()]
    new = head_params if head_params is not None else {n for n in names if n.startswith(head + ".")}
    if strategy == "full":
        trains = set(names)
    elif strategy == "linear-probe":
        trains = set(new)
    else:
        target = strategy.split(":", 1)[1]
        if target not in dict(model.named_modules()):
            raise UserError(f"--strategy {strategy}: the model has no module {target!r}")
        owned = [i for i, n in enumerate(names) if n.startswith(target + ".")]
        if not owned:
            raise UserError(f"--strategy {strategy}: module {target!r} has no parameters")
        caught = [n for n in names[: max(owned) + 1] if n in new]
        if caught:
            raise UserError(f"--strategy {strategy}: that would freeze the new head {caught[0].rsplit('.', 1)[0]!r}")
        trains = set(names[max(owned) + 1 :])
    for n, p in model.named_parameters():
        p.requires_grad_(n in trains and n not in builder_frozen)
    return frozen_modules(model)


def set_train_mode(model: nn.Module, frozen_modules: list[str]) -> None:
    """model.train(), except that fully frozen BatchNorm layers keep their running statistics."""
    model.train()
    for name in frozen_modules:
        m = model.get_submodule(name)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
