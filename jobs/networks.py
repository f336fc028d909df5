"""The built-in models' layers (``torch``); ``jobs.models`` names them for configs, sized for their data."""

import math

import torch
from torch import nn


class SimpleModel(nn.Module):
    """The seed article's model (``../shared/seeds/001_*.txt``): flatten, 784 -> 128 -> ReLU -> 10 on MNIST."""

    def __init__(self, in_features: int = 28 * 28, hidden: int = 128, num_classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x.view(x.size(0), -1))))


def cnn(kinds: tuple[str, ...], channels: tuple[int, ...], in_channels: int, num_classes: int) -> nn.Sequential:
    """Conv-ReLU-pool blocks, then global average pooling and a linear head: the layers ``kinds`` names."""
    widths = iter(channels)
    layers: list[nn.Module] = []
    for kind in kinds:
        if kind == "conv":
            out_channels = next(widths)
            layers.append(nn.Conv2d(in_channels, out_channels, 3, padding=1))
            in_channels = out_channels
        elif kind == "linear":
            layers.append(nn.Linear(in_channels, num_classes))
        else:
            layers.append({"relu": nn.ReLU(), "pool": nn.MaxPool2d(2, ceil_mode=True),
                           "avgpool": nn.AdaptiveAvgPool2d(1), "flatten": nn.Flatten()}[kind])
    return nn.Sequential(*layers)


def resnet18(in_channels: int, num_classes: int) -> nn.Module:
    """torchvision's ResNet-18, its stem taking the dataset's channel count."""
    import torchvision  # here: it adds ~1 s to the start of every rank that builds another model

    model = torchvision.models.resnet18(num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


class PatchEmbedding(nn.Module):
    """Each image row (all channels) becomes one token, plus a learned position embedding."""

    def __init__(self, channels: int, height: int, width: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(channels * width, dim)
        self.position = nn.Parameter(torch.zeros(height, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        rows = x.permute(0, 2, 1, 3).reshape(batch, height, channels * width)
        return self.proj(rows) + self.position


class DecoderBlock(nn.Module):
    """Pre-norm causal self-attention and MLP; the unit that pipeline stages are cut from."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.size(1)
        causal = torch.triu(torch.full((length, length), -math.inf, device=x.device), diagonal=1)
        h = self.norm1(x)
        x = x + self.attn(h, h, h, attn_mask=causal, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ClassifierHead(nn.Module):
    """Normalise the last token, which has attended to every row, and classify it."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(x[:, -1]))


def transformer(kinds: tuple[str, ...], dim: int, heads: int, shape: tuple[int, ...],
                num_classes: int) -> nn.Sequential:
    """A small decoder stack as a flat sequence (embedding, blocks..., head: ``kinds``), so stages can be cut."""
    channels, height, width = shape
    # The blocks are made first, as they always were: the order of construction decides the initial weights.
    blocks = iter([DecoderBlock(dim, heads) for _ in range(kinds.count("block"))])
    make = {"embedding": lambda: PatchEmbedding(channels, height, width, dim), "block": lambda: next(blocks),
            "head": lambda: ClassifierHead(dim, num_classes)}
    return nn.Sequential(*(make[kind]() for kind in kinds))


class TokenEmbedding(nn.Module):
    """Token ids to vectors, plus a learned position embedding."""

    def __init__(self, vocab: int, length: int, dim: int, dropout: float):
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.position = nn.Embedding(length, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.size(1), device=ids.device)
        return self.drop(self.tokens(ids) + self.position(positions))


class GPTBlock(nn.Module):
    """Pre-norm causal self-attention (``scaled_dot_product_attention``: a fused kernel where there is one) and
    MLP, each added to the residual stream; the unit that pipeline stages are cut from."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = (t.view(batch, length, self.heads, dim // self.heads).transpose(1, 2)
                   for t in self.qkv(self.norm1(x)).split(dim, dim=2))
        attended = nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(attended.transpose(1, 2).reshape(batch, length, dim)))
        return x + self.drop(self.mlp(self.norm2(x)))


class LMHead(nn.Module):
    """The next token's logits at every position, as (batch, vocab, length): the layout ``cross_entropy`` takes
    with (batch, length) targets."""

    def __init__(self, dim: int, vocab: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, vocab, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(x)).transpose(1, 2)


def gpt(kinds: tuple[str, ...], dim: int, heads: int, length: int, vocab: int, dropout: float,
        tie_head: bool) -> nn.Sequential:
    """A decoder-only language model as a flat sequence (embedding, blocks..., head: ``kinds``), so stages can be
    cut; ``tie_head``: the head's weight is the token embedding's (GPT-2's tying)."""
    make = {"embedding": lambda: TokenEmbedding(vocab, length, dim, dropout),
            "block": lambda: GPTBlock(dim, heads, dropout), "head": lambda: LMHead(dim, vocab)}
    model = nn.Sequential(*(make[kind]() for kind in kinds))
    for module in model.modules():  # GPT-2's initialisation: small normal weights, zero biases
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    head, embedding = model[-1], model[0]
    if tie_head and isinstance(head, LMHead) and isinstance(embedding, TokenEmbedding):
        head.out.weight = embedding.tokens.weight
    return model
