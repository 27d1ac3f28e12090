"""PyTorch's side of the VGG-16 training comparison in docs/gpu.md (runs on the GPU machine).

Trains torchvision's VGG-16 (no pretrained weights needed: speed does not depend on them) with
Adam on random data of the given batch and input size, and prints images/s and peak GPU memory
as one JSON line, so cfpipe's figure for the same model, batch and size can be set beside it.

    python3 scripts/torch_vgg_bench.py --batch 32 --size 224 --steps 20
"""
import argparse, json, time

import torch
import torchvision

p = argparse.ArgumentParser()
p.add_argument("--batch", type=int, default=32)
p.add_argument("--size", type=int, default=224)
p.add_argument("--classes", type=int, default=8)
p.add_argument("--steps", type=int, default=20)
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--device", default="cuda")
p.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
a = p.parse_args()
if a.threads:
    torch.set_num_threads(a.threads)

dev = torch.device(a.device)
model = torchvision.models.vgg16(num_classes=a.classes).to(dev)
if a.size != 224:
    # The CIFAR form: 512-d features after five pools of a 32x32 input, no 7x7 pooling.
    model.avgpool = torch.nn.Identity()
    model.classifier = torch.nn.Sequential(
        torch.nn.Linear(512 * (a.size // 32) ** 2, 512), torch.nn.ReLU(True),
        torch.nn.Linear(512, 512), torch.nn.ReLU(True), torch.nn.Linear(512, a.classes)).to(dev)
opt = torch.optim.Adam(model.parameters(), lr=1e-5, weight_decay=1e-3)
x = torch.randn(a.batch, 3, a.size, a.size, device=dev)
y = torch.randint(0, a.classes, (a.batch,), device=dev)
loss_fn = torch.nn.CrossEntropyLoss()


def step():
    opt.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    opt.step()


for _ in range(a.warmup):
    step()
if dev.type == "cuda":
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
t = time.perf_counter()
# Each step's own time on the CPU, for a median beside cfpipe's (on CUDA, steps queue
# asynchronously and only the mean over all of them is timed).
times = []
for _ in range(a.steps):
    s = time.perf_counter()
    step()
    times.append(time.perf_counter() - s)
if dev.type == "cuda":
    torch.cuda.synchronize()
dt = time.perf_counter() - t
print(json.dumps({
    "framework": "pytorch " + torch.__version__,
    "batch": a.batch, "size": a.size, "steps": a.steps,
    "images_per_s": a.batch * a.steps / dt,
    "step_ms": dt / a.steps * 1e3,
    "step_ms_median": sorted(times)[len(times) // 2] * 1e3 if dev.type == "cpu" else None,
    "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None,
}))
