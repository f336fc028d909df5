"""The built-in models, as targets a config names like any user's (``conf/model/*.yaml``: ``_target_:
jobs.models.mlp``). Each takes the dataset's ``sample_shape`` and ``num_classes`` and its settings, whose
defaults and docs are its ``settings`` dataclass (checked on the login node, ``jobs.targets``).

Torch-free until a model is built (``jobs.networks`` holds the layers): a sweep checks every member's
settings without importing torch.
"""

import dataclasses
import math
from typing import Any

from cluster.errors import require_positive
from jobs.settings import config_keys


@dataclasses.dataclass(frozen=True)
class MLPSettings:
    hidden: int = 128  # width of the hidden layer (128 is the seed article's SimpleModel)

    def __post_init__(self) -> None:
        with config_keys("model"):
            require_positive(hidden=self.hidden)


@dataclasses.dataclass(frozen=True)
class CNNSettings:
    channels: tuple[int, ...] = (32, 64)  # output channels of each conv block

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))  # a list, from a config
        if not self.channels or min(self.channels) <= 0:
            raise ValueError(f"model.channels must be positive numbers, got {list(self.channels)}")

    def layers(self) -> tuple[str, ...]:
        """The model's layers by kind, in order: where pipeline stages may be cut."""
        return (*("conv", "relu", "pool") * len(self.channels), "avgpool", "flatten", "linear")


@dataclasses.dataclass(frozen=True)
class ResNetSettings:
    pass  # torchvision's ResNet-18 as it is; its stem takes the dataset's channel count


@dataclasses.dataclass(frozen=True)
class TransformerSettings:
    dim: int = 64  # token embedding width
    depth: int = 4  # number of decoder blocks (pipeline stages split these)
    heads: int = 4  # attention heads; must divide dim

    def __post_init__(self) -> None:
        with config_keys("model"):
            require_positive(dim=self.dim, depth=self.depth, heads=self.heads)
        if self.dim % self.heads:
            raise ValueError(f"model.dim={self.dim} is not divisible by model.heads={self.heads}; change one of them")

    def layers(self) -> tuple[str, ...]:
        return ("embedding", *("block",) * self.depth, "head")


@dataclasses.dataclass(frozen=True)
class GPTSettings:
    dim: int = 64  # token embedding width
    depth: int = 2  # number of decoder blocks (pipeline stages split these)
    heads: int = 4  # attention heads; must divide dim
    dropout: float = 0.0  # dropout of the embeddings, attention and residual branches
    tie_head: bool = True  # the output head reuses the token embedding (untied where a pipeline cuts them apart)

    def __post_init__(self) -> None:
        with config_keys("model"):
            require_positive(dim=self.dim, depth=self.depth, heads=self.heads)
        if self.dim % self.heads:
            raise ValueError(f"model.dim={self.dim} is not divisible by model.heads={self.heads}; change one of them")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"model.dropout={self.dropout} is not in [0, 1)")

    def layers(self) -> tuple[str, ...]:
        return ("embedding", *("block",) * self.depth, "head")


def mlp(sample_shape: tuple[int, ...], num_classes: int, **settings: Any) -> Any:
    """The seed article's SimpleModel (``../shared/seeds/001_*.txt``): flatten, 784 -> 128 -> ReLU -> 10 on MNIST."""
    from jobs.networks import SimpleModel

    return SimpleModel(math.prod(sample_shape), MLPSettings(**settings).hidden, num_classes)


def cnn(sample_shape: tuple[int, ...], num_classes: int, **settings: Any) -> Any:
    """Conv-ReLU-pool blocks, global average pooling, a linear head: an ``nn.Sequential`` pipelines can cut."""
    from jobs.networks import cnn as build

    cfg = CNNSettings(**settings)
    return build(cfg.layers(), cfg.channels, sample_shape[0], num_classes)


def resnet18(sample_shape: tuple[int, ...], num_classes: int, **settings: Any) -> Any:
    """torchvision's ResNet-18."""
    from jobs.networks import resnet18 as build

    ResNetSettings(**settings)
    return build(sample_shape[0], num_classes)


def transformer(sample_shape: tuple[int, ...], num_classes: int, **settings: Any) -> Any:
    """A small decoder stack over image rows as tokens (embedding, blocks, head), an ``nn.Sequential``."""
    from jobs.networks import transformer as build

    cfg = TransformerSettings(**settings)
    return build(cfg.layers(), cfg.dim, cfg.heads, tuple(sample_shape), num_classes)


def gpt(sample_shape: tuple[int, ...], num_classes: int, **settings: Any) -> Any:
    """A decoder-only language model (token and position embeddings, pre-norm causal blocks, tied head) over
    windows of ``sample_shape[0]`` tokens from a vocabulary of ``num_classes`` (``data=text``: bytes, 256)."""
    from jobs.networks import gpt as build

    if len(sample_shape) != 1:
        raise ValueError(f"model=gpt reads sequences of token ids, and the data gives samples of shape "
                         f"{list(sample_shape)}; use data=text (or a dataset of 1-D token windows)")
    cfg = GPTSettings(**settings)
    return build(cfg.layers(), cfg.dim, cfg.heads, sample_shape[0], num_classes, cfg.dropout, cfg.tie_head)


mlp.settings = MLPSettings  # type: ignore[attr-defined]
gpt.settings = GPTSettings  # type: ignore[attr-defined]
cnn.settings = CNNSettings  # type: ignore[attr-defined]
resnet18.settings = ResNetSettings  # type: ignore[attr-defined]
transformer.settings = TransformerSettings  # type: ignore[attr-defined]
