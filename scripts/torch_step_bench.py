"""PyTorch's side of the training-step comparisons in `cargo bench` (`pipeline`: the MLP;
`conv -- model`: the small CNN), measured as ../shared/notes/perf-anchors.md describes.

One step is `zero_grad(set_to_none=True)`, forward, CrossEntropyLoss, backward and Adam(lr 1e-3)
`step`, on a fixed random batch. `--model mlp`: the RNF paper's split-MNIST MLP (784-400-400, one
2-way head), batch 128. `--model small_cnn`: cfpipe's `small_cnn` preset on 1×28×28 (conv 3×3 16 +
ReLU, max-pool 2, conv 3×3 32 + ReLU, max-pool 2, flatten, dense 64 + ReLU, a 10-way head), batch
64. Prints one JSON line with the median step time over `--repeats` rounds of `--steps` steps.

    python3 scripts/torch_step_bench.py --model mlp --threads 2
"""
import argparse, json, statistics, time

import torch

p = argparse.ArgumentParser()
p.add_argument("--model", choices=["mlp", "small_cnn"], default="mlp")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--steps", type=int, default=50)
p.add_argument("--repeats", type=int, default=5)
p.add_argument("--warmup", type=int, default=20)
a = p.parse_args()

torch.set_num_threads(a.threads)
torch.manual_seed(0)
nn = torch.nn
if a.model == "mlp":
    model = nn.Sequential(
        nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 400), nn.ReLU(), nn.Linear(400, 2))
    x, classes = torch.rand(128, 784), 2
else:
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10))
    x, classes = torch.rand(64, 1, 28, 28), 10
y = torch.randint(0, classes, (x.shape[0],))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
loss_fn = nn.CrossEntropyLoss()


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
    "model": a.model,
    "threads": a.threads,
    "step_ms_median": statistics.median(rounds) * 1e3,
    "step_ms_min": min(rounds) * 1e3,
}))
