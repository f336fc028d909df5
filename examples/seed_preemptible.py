"""``torchrun_ddp.py`` made preemption-safe with clusterjobs' API (``diff examples/torchrun_ddp.py
examples/seed_preemptible.py``: the lines marked "# clusterjobs"). A warning signal (preemption, the time limit)
makes every rank save at the same step boundary and the job come back; it resumes at the very batch it stopped
at, and ends with the parameters of an uninterrupted run:

    python -m cluster run --local 2 -- python examples/seed_preemptible.py     # kill -USR2 <pid> to rehearse
    python -m cluster run --nodes 2 --tasks-per-node 2 -- python examples/seed_preemptible.py

MNIST is read from ``--data-root`` when torchvision's files are there; otherwise random MNIST-shaped samples.
"""

import argparse
import hashlib
import os
import socket
import time

import torch
import torch.distributed as dist
from torch import nn, optim
from torch.utils.data import TensorDataset

import cluster  # clusterjobs


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


def train(args, job):  # clusterjobs
    rank, world_size = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    hosts = [None] * world_size
    dist.all_gather_object(hosts, socket.gethostname())
    total = torch.tensor([float(rank)])
    dist.all_reduce(total)
    if rank == 0:
        print(f"world {world_size}, hosts {sorted(set(hosts))}, sum of ranks {total.item():g}", flush=True)

    dataset = mnist_or_random(args.data_root)
    train_loader = cluster.ResumableLoader(dataset, 64, seed=0)  # clusterjobs

    model = SimpleModel()
    model = nn.parallel.DistributedDataParallel(model)
    optimizer = optim.SGD(model.parameters(), lr=0.01)
    state = {"model": model, "optimizer": optimizer, "data": train_loader}  # clusterjobs
    job.resume(state)  # clusterjobs

    started = time.perf_counter()
    for epoch in range(train_loader.epoch, args.epochs):  # clusterjobs
        model.train()
        for data, target in train_loader:
            optimizer.zero_grad()
            output = model(data)
            loss = nn.functional.cross_entropy(output, target)
            loss.backward()
            optimizer.step()
            job.step_done(state)  # clusterjobs
        print(f"Rank {rank}, epoch {epoch}, loss: {loss.item()}", flush=True)

    if rank == 0:
        print(f"train seconds: {time.perf_counter() - started:.3f}", flush=True)
        print(f"param digest: {digest(model.module)}", flush=True)
    job.finish(state)  # clusterjobs


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--data-root", default="./data")
    args = parser.parse_args()
    with cluster.start() as job:  # clusterjobs
        train(args, job)  # clusterjobs


if __name__ == "__main__":
    main()
