"""PyTorch's side of `cargo bench --bench conv` on the CPU: the same VGG-style block (conv 3x3
64->64, padding 1, on 32x64x32x32, then a 2x2 max-pool), forward alone and forward plus backward
with gradients for the weight, the bias and the input (as the Rust bench does), median of `--runs`
after warm-up, with `--threads` intra-op threads (the Rust bench uses 2 rayon threads on a 2-core
machine). With `--vgg` also a VGG-16 (32x32 form, batch 32) training step with Adam, like the
bench's `model` line. Prints one JSON line: median wall times, and median process CPU times
(`cpu_ms`; with `--threads 1` these barely move with the machine's load).

    python3 scripts/torch_conv_bench.py --threads 2
"""
import argparse, json, statistics, time

import torch

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
p.add_argument("--runs", type=int, default=10)
p.add_argument("--warmup", type=int, default=2)
p.add_argument("--vgg", action="store_true")
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)

x = torch.rand(32, 64, 32, 32) * 2 - 1
conv = torch.nn.Conv2d(64, 64, 3, padding=1)


cpu_ms = {}


def median_ms(f, runs, warmup, name=None):
    """Median wall time of one call in ms; the median process CPU time goes to `cpu_ms`."""
    for _ in range(warmup):
        f()
    ts, cs = [], []
    for _ in range(runs):
        t, c = time.perf_counter(), time.process_time()
        f()
        ts.append(time.perf_counter() - t)
        cs.append(time.process_time() - c)
    if name:
        cpu_ms[name] = statistics.median(cs) * 1e3
    return statistics.median(ts) * 1e3


def fwd():
    with torch.no_grad():
        torch.nn.functional.max_pool2d(conv(x), 2)


def fwd_bwd(input_grad):
    def f():
        xi = x.detach().requires_grad_(input_grad)
        conv.zero_grad(set_to_none=True)
        torch.nn.functional.max_pool2d(conv(xi), 2).sum().backward()
    return f


out = {
    "framework": "pytorch " + torch.__version__,
    "threads": torch.get_num_threads(),
    "forward_ms": median_ms(fwd, a.runs, a.warmup, "forward"),
    "forward_backward_ms": median_ms(fwd_bwd(True), a.runs, a.warmup, "forward_backward"),
    "forward_backward_no_input_grad_ms": median_ms(fwd_bwd(False), a.runs, a.warmup),
}
if a.vgg:
    # torchvision's VGG-16 in its 32x32 (CIFAR) form, built here so torchvision is not needed:
    # 13 conv+ReLU, 5 max-pools, 512->512->512->10 with ReLU and dropout 0.5, as cfpipe's
    # `vgg16` arch; one training step = forward, cross-entropy, backward, Adam step.
    layers, c = [], 3
    for v in [64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0]:
        if v == 0:
            layers.append(torch.nn.MaxPool2d(2))
        else:
            layers += [torch.nn.Conv2d(c, v, 3, padding=1), torch.nn.ReLU(True)]
            c = v
    layers += [torch.nn.Flatten(), torch.nn.Linear(512, 512), torch.nn.ReLU(True),
               torch.nn.Dropout(0.5), torch.nn.Linear(512, 512), torch.nn.ReLU(True),
               torch.nn.Dropout(0.5), torch.nn.Linear(512, 10)]
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    vx, vy = torch.rand(32, 3, 32, 32), torch.arange(32) % 10

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(vx), vy).backward()
        opt.step()

    out["vgg16_32x32_train_step_batch32_ms"] = median_ms(step, 3, 1)
# CPU time is comparable between loaded runs only with --threads 1 (OpenMP threads spin).
out["cpu_ms"] = cpu_ms
print(json.dumps(out))
