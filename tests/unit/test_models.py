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


def test_gpt_is_causal_tied_and_predicts_the_next_token_at_every_position():
    torch.manual_seed(0)
    model = build_model("gpt", sample_shape=(12,), num_classes=256, dim=32, depth=2)
    assert [type(m).__name__ for m in model] == ["TokenEmbedding", "GPTBlock", "GPTBlock", "LMHead"]
    assert model[-1].out.weight is model[0].tokens.weight  # tied
    ids = torch.randint(256, (3, 12))
    logits = model(ids)
    assert logits.shape == (3, 256, 12)  # (batch, vocab, length): cross_entropy's layout for (batch, length)
    changed = ids.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 256
    later = model(changed)
    torch.testing.assert_close(later[..., :7], logits[..., :7])  # a position sees no later token
    assert not torch.allclose(later[..., 7:], logits[..., 7:])
    untied = build_model("gpt", sample_shape=(12,), num_classes=256, dim=32, depth=2, tie_head=False)
    assert untied[-1].out.weight is not untied[0].tokens.weight


def test_gpt_learns_a_repeating_text():
    """Every parameter gets a gradient, and a sequence it has seen becomes predictable (loss from ln 256 to ~0)."""
    torch.manual_seed(0)
    text = torch.tensor(list(b"abcdefgh" * 4))
    inputs, targets = text[:-1].view(1, -1).repeat(4, 1), text[1:].view(1, -1).repeat(4, 1)
    model = build_model("gpt", sample_shape=(inputs.shape[1],), num_classes=256, dim=32, depth=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(60):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(inputs), targets)
        loss.backward()
        if step == 0:
            assert all(p.grad is not None for p in model.parameters())
            first = loss.item()
        optimizer.step()
    assert first > 5.0 and loss.item() < 0.5, (first, loss.item())


def test_a_gpt_cut_into_stages_unties_its_head_from_the_embedding():
    from cluster.parallel_dims import ParallelDims
    from jobs.pipeline import split_stages, untie_across_stages

    model = build_model("gpt", sample_shape=(8,), num_classes=256, dim=32, depth=2)
    dims = ParallelDims(world_size=2, dp=1, pp=2, microbatches=2, stages_per_rank=1, layers=4, cut_by_name=False,
                        counted_later=False, global_batch_size=4, micro_batch_size=2)
    stages = split_stages(model, dims)
    notes = untie_across_stages(stages)
    assert len(notes) == 1 and "3.out.weight (stage 1) was tied to 0.tokens.weight (stage 0)" in notes[0]
    head, embedding = stages[1][-1].out.weight, stages[0][0].tokens.weight
    assert head is not embedding and torch.equal(head, embedding)


@pytest.mark.parametrize("name, blocks", [("gpt", ["GPTBlock"] * 2), ("transformer", ["DecoderBlock"] * 2),
                                          ("cnn", ["Conv2d"] * 2)])
def test_activation_checkpointing_recomputes_each_block_in_backward_and_changes_no_number(name, blocks):
    from jobs.strategies import checkpoint_blocks, repeated_blocks

    shape = (12,) if name == "gpt" else (1, 8, 8)
    settings = {"channels": [4, 8]} if name == "cnn" else {"depth": 2, "dim": 32}
    if name == "gpt":
        settings["dropout"] = 0.1  # the recomputation must draw the masks it drew the first time
    inputs = torch.randint(256, (4, 12)) if name == "gpt" else torch.randn(4, 1, 8, 8)
    runs = []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        model = build_model(name, sample_shape=shape, num_classes=256 if name == "gpt" else 4, **settings)
        assert [type(block).__name__ for block in repeated_blocks(model)] == blocks
        calls = []
        for block in repeated_blocks(model):  # counted inside forward: a recomputation calls forward, not the module
            def counted(*args, _forward=block.forward, _calls=calls, **kwargs):
                _calls.append(1)
                return _forward(*args, **kwargs)

            block.forward = counted
        if checkpointed:
            assert checkpoint_blocks(model) == len(blocks)
        torch.manual_seed(1)  # dropout draws, where the model has some
        model(inputs).float().pow(2).mean().backward()
        runs.append((len(calls), {n: p.grad.clone() for n, p in model.named_parameters()},
                     set(model.state_dict())))
    (plain_calls, plain_grads, plain_keys), (calls, grads, keys) = runs
    assert calls == 2 * plain_calls, "each block runs again in backward"
    assert keys == plain_keys  # checkpoints keep their parameter names
    for name_, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name_], rtol=0, atol=0, msg=name_)


def test_fsdp_leaves_the_units_that_share_a_tied_parameter_to_the_root():
    from jobs.strategies import fsdp_units

    tied = build_model("gpt", sample_shape=(8,), num_classes=256, dim=32, depth=2)
    assert [type(unit).__name__ for unit in fsdp_units(tied)] == ["GPTBlock", "GPTBlock"]
    untied = build_model("gpt", sample_shape=(8,), num_classes=256, dim=32, depth=2, tie_head=False)
    assert [type(unit).__name__ for unit in fsdp_units(untied)] == ["LMHead", "GPTBlock", "GPTBlock", "TokenEmbedding"]
