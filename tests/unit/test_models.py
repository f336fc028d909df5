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
    assert all(p.grad is not None for p in model.parameters()), "a parameter the output does not depend on"


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet18", "transformer"])
def test_every_model_learns_to_tell_classes_apart(name):
    """Shapes alone would pass a model whose output ignores its input: each must fit a small labelled batch."""
    torch.manual_seed(0)
    inputs, targets = torch.randn(16, 1, 8, 8), torch.arange(16) % 4
    inputs += targets.view(-1, 1, 1, 1).float()  # each class a brightness of its own: learnable by every model
    model = build_model(name, sample_shape=(1, 8, 8), num_classes=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(40):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(inputs), targets)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(inputs).argmax(1) == targets).float().mean().item()
    assert accuracy == 1.0, f"{name} got {accuracy:.0%} of its training batch right after 40 steps"


def test_transformer_is_a_flat_sequence_of_embedding_blocks_and_head():
    model = build_model("transformer", depth=3, sample_shape=(1, 28, 28), num_classes=10)
    assert [type(m).__name__ for m in model] == ["PatchEmbedding"] + ["DecoderBlock"] * 3 + ["ClassifierHead"]
