"""PyTorch's side of the MLP training-step comparison (`cargo bench --bench pipeline`).

One training step of the RNF paper's split-MNIST MLP (784-400-400 with one 2-way head), batch
128, CrossEntropyLoss and Adam(lr 1e-3), on a fixed batch: `zero_grad(set_to_none=True)`,
forward, loss, backward, `step`, as ../shared/notes/perf-anchors.md describes. Prints one JSON
line with the median step time over `--repeats` rounds of `--steps` steps, so the bench can set
cfpipe's figure beside it in the same run.

    python3 scripts/torch_mlp_bench.py --threads 2
"""
import argparse, json, statistics, time

import torch

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
p.add_argument("--steps", type=int, default=50)
p.add_argument("--repeats", type=int, default=5)
p.add_argument("--warmup", type=int, default=20)
a = p.parse_args()

torch.set_num_threads(a.threads)
torch.manual_seed(0)
model = torch.nn.Sequential(
    torch.nn.Linear(784, 400), torch.nn.ReLU(),
    torch.nn.Linear(400, 400), torch.nn.ReLU(),
    torch.nn.Linear(400, 2))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
loss_fn = torch.nn.CrossEntropyLoss()
x = torch.rand(128, 784)
y = torch.randint(0, 2, (128,))


def step():
    opt.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    opt.step()


for _ in range(a.warmup):
    step()
rounds = []
for _ in range(a.repeats):
    t = time.perf_counter()
    for _ in range(a.steps):
        step()
    rounds.append((time.perf_counter() - t) / a.steps)
print(json.dumps({
    "framework": "pytorch " + torch.__version__,
    "threads": a.threads,
    "step_ms_median": statistics.median(rounds) * 1e3,
    "step_ms_min": min(rounds) * 1e3,
}))
