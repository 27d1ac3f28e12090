"""PyTorch's side of the small-CNN training-step comparison (`cargo bench --bench conv -- model`).

cfpipe's `small_cnn` preset on 1×28×28 inputs (conv 3×3 16 + ReLU, max-pool 2, conv 3×3 32 +
ReLU, max-pool 2, flatten, dense 64 + ReLU, a 10-way head), batch 64, CrossEntropyLoss and Adam
(lr 1e-3), on a fixed random batch. Prints one JSON line with the median step time.

    python3 scripts/torch_cnn_bench.py --threads 2
"""
import argparse, json, statistics, time

import torch

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
p.add_argument("--batch", type=int, default=64)
p.add_argument("--steps", type=int, default=20)
p.add_argument("--repeats", type=int, default=5)
a = p.parse_args()

torch.set_num_threads(a.threads)
torch.manual_seed(0)
nn = torch.nn
model = nn.Sequential(
    nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
loss_fn = nn.CrossEntropyLoss()
x = torch.rand(a.batch, 1, 28, 28)
y = torch.randint(0, 10, (a.batch,))


def step():
    opt.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    opt.step()


for _ in range(5):
    step()
rounds = []
for _ in range(a.repeats):
    t = time.perf_counter()
    for _ in range(a.steps):
        step()
    rounds.append((time.perf_counter() - t) / a.steps)
print(json.dumps({"framework": "pytorch " + torch.__version__, "threads": a.threads,
                  "step_ms_median": statistics.median(rounds) * 1e3}))
