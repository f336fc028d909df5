import pytest
import torch

from jobs.data import DatasetInfo
from jobs.loop import build_model as build
from jobs.networks import SimpleModel
from jobs.targets import Target


def build_model(name: str, *, sample_shape: tuple[int, ...], num_classes: int, **settings) -> torch.nn.Module:
    """What ``model=NAME model.KEY=VALUE...`` builds for data of that shape."""
    return build(Target("model", f"jobs.models.{name}", settings), DatasetInfo(None, sample_shape, num_classes))


def test_mlp_is_the_seed_articles_simple_model():
    model = build_model("mlp", sample_shape=(1, 28, 28), num_classes=10)
    assert isinstance(model, SimpleModel)
    assert [tuple(p.shape) for p in model.parameters()] == [(128, 784), (128,), (10, 128), (10,)]


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet18", "transformer"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_every_model_classifies_every_dataset_shape(name, shape):
    model = build_model(name, sample_shape=shape, num_classes=10)
    logits = model(torch.randn(2, *shape))
    assert logits.shape == (2, 10)
    logits.sum().backward()


def test_transformer_is_a_flat_sequence_of_embedding_blocks_and_head():
    model = build_model("transformer", depth=3, sample_shape=(1, 28, 28), num_classes=10)
    assert [type(m).__name__ for m in model] == ["PatchEmbedding"] + ["DecoderBlock"] * 3 + ["ClassifierHead"]
