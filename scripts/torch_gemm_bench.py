"""PyTorch's side of `cargo bench --bench gemm`: torch.mm on the same shapes and layouts
(a transposed operand is a transposed view), 2 threads, median ms per call as JSON."""
import json
import time

import torch

torch.set_num_threads(2)
SHAPES = [
    ("mlp fwd W1·xT", 400, 784, 128, False, True),
    ("mlp fwd W2·h", 400, 400, 128, False, False),
    ("mlp bwd dW1=g·x", 400, 128, 784, False, False),
    ("mlp bwd dW2=g·hT", 400, 128, 400, False, True),
    ("mlp bwd dx2=W2T·g", 400, 400, 128, True, False),
    ("vgg 64ch 32x32 fwd", 64, 576, 32 * 1024, False, False),
    ("vgg 64ch 1 sample fwd", 64, 576, 1024, False, False),
    ("vgg 64ch 1 sample dW", 64, 1024, 576, False, True),
    ("vgg 512ch 4x4 fwd", 512, 4608, 32 * 16, False, False),
    ("vgg 512ch 4x4 dW", 512, 512, 4608, False, True),
]
out = {}
for name, m, k, n, ta, tb in SHAPES:
    a = torch.rand(k, m).t() if ta else torch.rand(m, k)
    b = torch.rand(n, k).t() if tb else torch.rand(k, n)
    c = torch.empty(m, n)
    reps = max(5, min(2000, int(2e10 / (2 * m * k * n))))
    for _ in range(3):
        torch.mm(a, b, out=c)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b, out=c)
        times.append(time.perf_counter() - t)
    times.sort()
    out[name] = times[reps // 2] * 1e3
print(json.dumps(out))
