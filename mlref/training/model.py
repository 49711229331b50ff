"""The CTR model: embeddings + normalized numerics -> DCN-v2 cross network -> MLP -> logit.

Everything serving needs beyond the raw transform output lives in the module as buffers
(embedding sizes for the out-of-range guard, numeric mean/std), so the exported ONNX graph is
self-contained: a server feeds ``transform`` output and reads a probability.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mlref.features.transform import FeatureSpec
from mlref.settings import TrainSettings

_MIN_STD = 1e-6  # a constant train column must not divide by zero


@dataclass(frozen=True)
class Parent:
    """A registered model's weights a warm start begins from, and the negative rate it was
    trained at (its logits' scale)."""

    state: dict[str, torch.Tensor]
    negative_rate: float


class CrossLayer(nn.Module):
    """DCN-v2 cross: ``x_{l+1} = x0 * (W x_l + b) + x_l``.

    Explicit bounded-degree feature crosses (user x ad, ad x position ...) that an MLP learns
    only slowly. ``rank`` > 0 factors W as U V^T, which pays when the input is wide.
    """

    def __init__(self, dim: int, rank: int = 0) -> None:
        super().__init__()
        if 0 < rank < dim:
            self.weight: nn.Module = nn.Sequential(
                nn.Linear(dim, rank, bias=False), nn.Linear(rank, dim)
            )
        else:
            self.weight = nn.Linear(dim, dim)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.weight(x) + x


class CTRModel(nn.Module):
    """Click model over ``transform`` output; ``forward`` gives probabilities (corrected for
    negative downsampling), ``logits`` trains.

    Class imbalance: the output bias starts at the base-rate logit ``log(p / (1 - p))`` instead
    of reweighting positives. Reweighting (pos_weight, oversampling) shifts every prediction
    upwards, so the model's probabilities stop being CTRs and bidding/ranking on them breaks;
    starting at the base rate keeps the loss a proper scoring rule and spares the first epoch
    from learning the intercept, which is what made imbalance hurt in the first place.
    """

    def __init__(
        self,
        spec: FeatureSpec,
        settings: TrainSettings,
        num_mean: np.ndarray,
        num_std: np.ndarray,
        base_rate: float,
    ) -> None:
        super().__init__()
        if not 0 < base_rate < 1:
            raise ValueError(
                f"base rate {base_rate} must lie in (0, 1): the labels need both classes"
            )
        dim = settings.embedding_dim
        # One table for all fields (field i owns rows offsets[i] .. offsets[i] + size_i - 1):
        # one Gather per batch instead of a Gather, Squeeze and Concat input per field, which
        # is most of the fixed cost of scoring a small batch.
        sizes = torch.tensor([f.size for f in spec.categorical], dtype=torch.int64)
        offsets = torch.cumsum(sizes, 0) - sizes
        self.embedding = nn.Embedding(int(sizes.sum()), dim)
        nn.init.normal_(self.embedding.weight, std=0.05)
        with torch.no_grad():
            self.embedding.weight[offsets].zero_()  # OOV buckets start neutral
        self.register_buffer("sizes", sizes)
        self.register_buffer("offsets", offsets)
        std = np.where(np.asarray(num_std) < _MIN_STD, 1.0, num_std)
        self.register_buffer("num_mean", torch.as_tensor(num_mean, dtype=torch.float32))
        self.register_buffer("num_std", torch.as_tensor(std, dtype=torch.float32))

        width = dim * len(spec.categorical) + len(spec.numeric)
        self.cross = nn.ModuleList(
            CrossLayer(width, settings.cross_rank) for _ in range(settings.cross_layers)
        )
        layers: list[nn.Module] = []
        for units in settings.hidden_units:
            layers += [nn.Linear(width, units), nn.ReLU(), nn.Dropout(settings.dropout)]
            width = units
        self.mlp = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)
        nn.init.constant_(self.head.bias, math.log(base_rate / (1 - base_rate)))
        # Trained on a share w of the negatives, the model's odds are 1/w times the true ones:
        # p' = p / (p + (1 - p) / w) is the logit plus log(w). A plain attribute, not a buffer:
        # it belongs to this run's sampling, not to weights another run might load.
        self.logit_shift = math.log(settings.negative_rate)

    def start_from(self, parent: Parent) -> None:
        """Take the parent's weights and its input normalization (a warm start). A parent
        trained at another negative rate has its logits on another scale: the head's bias moves
        by the difference, so training starts from the parent's very probabilities."""
        self.load_state_dict(parent.state)
        with torch.no_grad():
            self.head.bias += math.log(parent.negative_rate) - self.logit_shift

    def logits(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        # Any index outside an embedding (a caller bypassing transform, a corrupt request)
        # falls into the OOV bucket instead of failing the Gather at serving time.
        cat = torch.where((cat >= 0) & (cat < self.sizes), cat, 0)
        embedded = self.embedding(cat + self.offsets).flatten(1)
        normalized = (num - self.num_mean) / self.num_std
        x0 = torch.cat([embedded, normalized], dim=1)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        return self.head(self.mlp(x)).squeeze(-1)

    def forward(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        logits = self.logits(cat, num)
        if self.logit_shift:  # in the exported graph too: every consumer reads true CTRs
            logits = logits + self.logit_shift
        return torch.sigmoid(logits)
