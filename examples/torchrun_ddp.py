"""The seed article's DDP example (../shared/seeds/001_*.txt) as a torchrun-style script: ``mp.spawn`` gave way to
``init_process_group("env://")``, which reads RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT. Nothing in it knows
clusterjobs; ``python -m cluster run`` (or torchrun) starts it:

    python -m cluster run --local 2 -- python examples/torchrun_ddp.py
    python -m cluster run --nodes 2 --tasks-per-node 2 -- python examples/torchrun_ddp.py

MNIST is read from ``--data-root`` when torchvision's files are there; otherwise random MNIST-shaped samples.
"""

import argparse
import gc
import hashlib
import os
import socket
import time

import torch
import torch.distributed as dist
from torch import nn, optim
from torch.utils.data import TensorDataset


class SimpleModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x.view(x.size(0), -1))))


def mnist_or_random(root):
    if os.path.isdir(os.path.join(root, "MNIST", "raw")):
        from torchvision import datasets, transforms

        return datasets.MNIST(root=root, train=True, download=False, transform=transforms.ToTensor())
    generator = torch.Generator().manual_seed(1234)
    images, labels = torch.rand(2048, 1, 28, 28, generator=generator), torch.randint(10, (2048,), generator=generator)
    return TensorDataset(images, labels)


def digest(model):
    sha = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        sha.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()


def setup():
    dist.init_process_group("gloo", init_method="env://")


def train(args):
    rank, world_size = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    hosts = [None] * world_size
    dist.all_gather_object(hosts, socket.gethostname())
    total = torch.tensor([float(rank)])
    dist.all_reduce(total)
    if rank == 0:
        print(f"world {world_size}, hosts {sorted(set(hosts))}, sum of ranks {total.item():g}", flush=True)

    dataset = mnist_or_random(args.data_root)
    train_sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world_size, rank=rank)
    train_loader = torch.utils.data.DataLoader(dataset, batch_size=64, sampler=train_sampler)

    model = SimpleModel()
    model = nn.parallel.DistributedDataParallel(model)
    optimizer = optim.SGD(model.parameters(), lr=0.01)

    started = time.perf_counter()
    for epoch in range(args.epochs):
        train_sampler.set_epoch(epoch)
        model.train()
        for data, target in train_loader:
            optimizer.zero_grad()
            output = model(data)
            loss = nn.functional.cross_entropy(output, target)
            loss.backward()
            optimizer.step()
        print(f"Rank {rank}, epoch {epoch}, loss: {loss.item()}", flush=True)

    if rank == 0:
        print(f"train seconds: {time.perf_counter() - started:.3f}", flush=True)
        print(f"param digest: {digest(model.module)}", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--data-root", default="./data")
    args = parser.parse_args()
    setup()
    train(args)
    gc.collect()  # DDP's reducer keeps the group alive through a reference cycle: free it first
    dist.destroy_process_group()  # before the interpreter ends: gloo's threads must not outlive it


if __name__ == "__main__":
    main()
