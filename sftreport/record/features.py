"""Features probe: the penultimate representation (the classifier head's input) of the probe set.

- a 2-D projection per epoch: PCA fitted once on the pretrained model's features, so every epoch is
  drawn on the same axes (and optionally t-SNE, which has no shared axes);
- class separability: leave-one-out k-NN accuracy on the features;
- linear CKA between each probed layer's representation now and in the pretrained model.

The PCA axes and the pretrained model's Gram matrices are the probe's state (`state_dict`), which a
resumed run restores.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from sftreport.schema import CKA, Features, Projection


@contextmanager
def capture_head_input(model: nn.Module, head: str, sink: list[torch.Tensor], flatten: bool = True):
    """Append the input of the head module (flattened per sample, unless not `flatten`) to `sink` on every
    forward call."""

    def hook(module, args):
        x = args[0].detach()
        sink.append((x.reshape(x.shape[0], -1) if flatten else x).float())

    handle = model.get_submodule(head).register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class PCA2:
    """Two principal axes, fitted once."""

    def __init__(self, x: torch.Tensor):
        self.mean = x.mean(dim=0, keepdim=True)
        centered = x - self.mean
        # economy SVD of (N, D); N is the probe size (hundreds), so this is cheap even for D = 2048
        _, _, vh = torch.linalg.svd(centered, full_matrices=False)
        comps = vh[:2]
        if comps.shape[0] < 2:  # one feature (or one sample): the second axis is all zeros
            comps = torch.cat([comps, torch.zeros(2 - comps.shape[0], comps.shape[1], device=comps.device)])
        # fix each axis' sign so the projection does not flip between runs
        signs = torch.sign(comps[torch.arange(comps.shape[0]), comps.abs().argmax(dim=1)])
        self.components = comps * torch.where(signs == 0, 1.0, signs)[:, None]

    @classmethod
    def restored(cls, mean: torch.Tensor, components: torch.Tensor) -> PCA2:
        pca = cls.__new__(cls)
        pca.mean, pca.components = mean, components
        return pca

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) @ self.components.T


def knn_accuracy(x: torch.Tensor, labels: torch.Tensor, k: int, classes: int | None = None) -> torch.Tensor:
    """Leave-one-out k-NN accuracy (cosine similarity, majority vote, ties to the nearest)."""
    n = x.shape[0]
    k = min(k, n - 1)
    if k < 1:
        return torch.tensor(float("nan"), device=x.device)
    z = torch.nn.functional.normalize(x, dim=1)
    sim = z @ z.T
    sim.fill_diagonal_(-float("inf"))
    nn_idx = sim.topk(k, dim=1).indices  # nearest first
    votes = labels[nn_idx]
    classes = classes or int(labels.max()) + 1  # pass it: reading the max back is a host sync
    counts = torch.zeros(n, classes, device=x.device).scatter_add_(1, votes, torch.ones_like(votes, dtype=torch.float))
    # a tie goes to the class of the nearest neighbour among the tied: each class gets a bonus below 1 (so it
    # never outweighs a vote) from its best-ranked neighbour alone, larger the nearer that neighbour is
    rank_bonus = (0.5 / (1 + torch.arange(k, device=x.device, dtype=torch.float))).expand(n, k).contiguous()
    bonus = torch.zeros(n, classes, device=x.device).scatter_reduce_(1, votes, rank_bonus, reduce="amax")
    pred = (counts + bonus).argmax(dim=1)
    return (pred == labels).float().mean()


def centered_gram(x: torch.Tensor) -> torch.Tensor:
    """H K H for the linear kernel K = X Xᵀ (H the centering matrix), in float64."""
    x = x.double()
    x = x - x.mean(dim=0, keepdim=True)
    return x @ x.T


def linear_cka(gram_a: torch.Tensor, gram_b: torch.Tensor) -> torch.Tensor:
    """Linear CKA from two centered Gram matrices: ⟨Ka, Kb⟩ / (‖Ka‖ ‖Kb‖) (Kornblith et al., 2019)."""
    num = (gram_a * gram_b).sum()
    den = gram_a.norm() * gram_b.norm()
    return torch.where(den > 0, num / den, torch.full_like(num, float("nan")))


class FeatureProbe:
    def __init__(self, head: str, labels: torch.Tensor, num_classes: int, knn_k: int, tsne: bool):
        self.head = head
        self.labels = labels
        self.num_classes = num_classes
        self.knn_k = knn_k
        self.tsne = tsne
        self.pca: PCA2 | None = None
        self.ref_grams: dict[str, torch.Tensor] = {}

    def state_dict(self) -> dict:
        """The fixed references, on the CPU: the PCA axes and each layer's centred Gram matrix (N × N, float64)."""
        pca = [self.pca.mean.cpu(), self.pca.components.cpu()] if self.pca is not None else None
        return {"pca": pca, "grams": {name: g.cpu() for name, g in self.ref_grams.items()}}

    def load_state_dict(self, state: dict) -> None:
        device = self.labels.device
        pca = state["pca"]
        self.pca = PCA2.restored(pca[0].to(device), pca[1].to(device)) if pca is not None else None
        self.ref_grams = {name: g.to(device) for name, g in state["grams"].items()}

    def measure(
        self, feats: torch.Tensor, logits: torch.Tensor, reps: dict[str, torch.Tensor]
    ) -> tuple[Features, list[CKA]]:
        if self.pca is None:
            self.pca = PCA2(feats)
        xy = self.pca.transform(feats)
        knn = knn_accuracy(feats, self.labels, self.knn_k, self.num_classes)
        acc = (logits.argmax(dim=1) == self.labels).float().mean()
        # CKA compares the same probe samples now and at epoch 0: an output whose rows are not the samples (a
        # detector's proposals, whose number varies from pass to pass) has no such pairing and is left out
        n_samples = feats.shape[0]
        grams = {name: centered_gram(r) for name, r in reps.items() if r.shape[0] == n_samples}
        if not self.ref_grams:
            self.ref_grams = grams
        names = [n for n in grams if n in self.ref_grams]
        ckas = torch.stack([linear_cka(grams[n], self.ref_grams[n]) for n in names]) if names else torch.zeros(0)
        head = torch.stack([knn.double(), acc.double()])
        xy_list, head_list, cka_list = xy.T.tolist(), head.tolist(), ckas.tolist()
        projections = [Projection(method="pca", x=xy_list[0], y=xy_list[1])]
        if self.tsne:
            projections.append(tsne_projection(feats))
        features = Features(
            module=self.head,
            dim=feats.shape[1],
            projections=projections,
            knn_accuracy=head_list[0],
            knn_k=min(self.knn_k, feats.shape[0] - 1),
            probe_accuracy=head_list[1],
        )
        return features, [CKA(module=n, value=v) for n, v in zip(names, cka_list)]


def tsne_projection(feats: torch.Tensor) -> Projection:
    from sklearn.manifold import TSNE

    x = feats.cpu().numpy()
    xy = TSNE(
        n_components=2, init="pca", random_state=0, perplexity=min(30.0, max(2.0, (len(x) - 1) / 3))
    ).fit_transform(x)
    return Projection(method="tsne", x=xy[:, 0].tolist(), y=xy[:, 1].tolist())
