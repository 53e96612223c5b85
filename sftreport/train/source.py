"""The source task of sftreport's runs: held-out images of the task the model was pretrained for, named
after the pretrained head's classes, for the recorder to measure forgetting with (record/source_task.py).

- The embedded models (digits_resnet, digits_lstm, digits_transformer with their shipped weights) measure
  digits 0–4 out of the box: the validation quarter of scikit-learn's digits 0–4, which pretraining
  (train/pretrain.py) never trained on, at the size each was pretrained at (32 px; 8 rows of 8).
- `--source-data DIR`, an ImageFolder (DIR/<class>/<images>), for any model whose weights hold their
  pretrained head. A class folder is named by one of the head's classes: a category name of the weights
  (torchvision's `meta["categories"]`, e.g. `tench`), an ImageNet synset id for a 1000-class ImageNet head
  (`n01440764`), or a class index (`0`). A weights file with a 1000-class head is taken to be in
  torchvision's ImageNet order. Images are resized to the size the weights were trained at (the weights'
  crop size; 224 for a weights file). With `--weights none` there is no pretrained head, hence no source
  task: `--source-data` is refused.
"""

from __future__ import annotations

from pathlib import Path

from sftreport.errors import UserError
from sftreport.record.source_task import SourceTask
from sftreport.train.data import DIGITS_SOURCE_CLASSES, FolderImages, ImageTensors, load_digits_split
from sftreport.train.imagenet import imagenet_wnids
from sftreport.train.models import EMBEDDED, SourceHead


def class_index(name: str, head: SourceHead) -> int | None:
    """The head output a class folder's name stands for (None: not a class of the head)."""
    if head.categories is not None and name in head.categories:
        return head.categories.index(name)
    if head.imagenet:
        wnids = imagenet_wnids()
        if name in wnids:
            return wnids.index(name)
    if name.isdigit() and int(name) < head.classes and str(int(name)) == name:
        return int(name)
    return None


def source_data(
    model: str, weights: str, folder: Path | None, head: SourceHead | None
) -> tuple[ImageTensors | FolderImages, list[str], list[int], str, str] | None:
    """(images, class names, head outputs, task name, where from) of the run's source task, or None when it
    has none. Bad input (a folder whose classes the head does not have) is refused in one line."""
    if folder is None:
        if model in EMBEDDED and weights.upper() == "DEFAULT" and head is not None:
            _, held_out = load_digits_split(DIGITS_SOURCE_CLASSES)
            names = [str(c) for c in DIGITS_SOURCE_CLASSES]
            return (
                held_out,
                names,
                list(range(len(names))),
                "digits 0–4",
                "scikit-learn's handwritten digits 0–4, the validation quarter that pretraining held out",
            )
        return None
    if weights.lower() == "none":
        raise UserError(
            "--source-data measures the task of the pretrained head, and --weights none has none "
            "(give pretrained weights that hold the head)"
        )
    if head is None:
        raise UserError(f"--source-data: the weights {weights} hold no classifier head that fits {model}'s")
    if not folder.is_dir():
        raise UserError(f"--source-data: {folder} is not a directory (expected one class folder per source class)")
    images = FolderImages(folder, head.image_size)
    targets = [class_index(c, head) for c in images.classes]
    unknown = [c for c, t in zip(images.classes, targets) if t is None]
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
        ways = ["a class index 0–" + str(head.classes - 1)]
        if head.categories is not None:
            ways.insert(0, f"a category name of the weights (e.g. {head.categories[0]!r})")
        if head.imagenet:
            ways.insert(1, f"an ImageNet synset id (e.g. {imagenet_wnids()[0]!r})")
        raise UserError(
            f"--source-data {folder}: class folder(s) {shown} are not classes of the pretrained "
            f"{head.classes}-class head; name each by " + ", or ".join(ways)
        )
    found = [t for t in targets if t is not None]
    if len(set(found)) != len(found):
        raise UserError(f"--source-data {folder}: two class folders name the same class of the pretrained head")
    # shown by the head's own class name, with the folder's where it differs ("goldfish (n01443537)")
    names = [
        c if head.categories is None or head.categories[t] == c else f"{head.categories[t]} ({c})"
        for c, t in zip(images.classes, found)
    ]
    task = "ImageNet-1k" if head.imagenet else "the pretrained head's task"
    return images, names, found, f"{task}, {len(names)} of its {head.classes} classes", f"ImageFolder at {folder}"


def source_task(model: str, weights: str, folder: Path | None, head: SourceHead | None, batches) -> SourceTask | None:
    """The SourceTask for the recorder; `batches(images, size, targets)` turns the images into the run's
    evaluation batches (on the device, this process's share), their labels (class positions) into the
    head's outputs `targets`."""
    found = source_data(model, weights, folder, head)
    if found is None or head is None:
        return None
    images, names, targets, name, where = found
    return SourceTask(
        head=head.module,
        data=batches(images, head.image_size, targets),
        classes=names,
        targets=targets,
        name=name,
        source=where,
        image_size=head.image_size,
    )
