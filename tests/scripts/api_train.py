"""A user's own training loop on the public API (``cluster.start``), with dropout and random augmentation:
the tests run it under ``python -m cluster run`` (locally and on Slurm), interrupt it, and compare its final
parameters with an uninterrupted run's.

    python -m cluster run --local 2 -- python tests/scripts/api_train.py --steps 1000
"""

import argparse
import hashlib

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

import cluster


class NoisyShapes(Dataset):
    """Random samples whose augmentation (noise, a flip) draws from the global generator, as torchvision's do."""

    def __init__(self, size: int = 1024):
        generator = torch.Generator().manual_seed(7)
        self.x = torch.randn(size, 16, generator=generator)
        self.y = (self.x[:, 0] > 0).long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int):
        x = self.x[index] + 0.1 * torch.randn(16)
        return (x.flip(0) if torch.rand(()) < 0.5 else x), self.y[index]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    with cluster.start(checkpoint_every_steps=50, config={"steps_total": args.steps}) as job:
        torch.manual_seed(0)
        model = nn.parallel.DistributedDataParallel(
            nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 2)))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=100, gamma=0.5)
        loader = cluster.ResumableLoader(NoisyShapes(), 32, seed=1)
        torch.manual_seed(1 + job.rank)  # per-rank streams for dropout and augmentation
        state = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "data": loader}
        job.resume(state)
        while job.step < args.steps:
            for x, y in loader:
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                optimizer.step()
                scheduler.step()
                job.step_done(state)
                if job.is_main and job.step % 10 == 0:
                    (job.run_dir / "step").write_text(str(job.step))
                if job.step == args.steps:
                    break
        job.finish(state)
        sha = hashlib.sha256()
        for name, tensor in sorted(model.module.state_dict().items()):
            sha.update(name.encode() + tensor.detach().contiguous().numpy().tobytes())
        if job.is_main:
            print(f"param digest: {sha.hexdigest()} world {dist.get_world_size()} resumed from {job.resumed_from}",
                  flush=True)


if __name__ == "__main__":
    main()
