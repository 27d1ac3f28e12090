"""PyTorch's side of `cargo bench --bench gemm`: torch.mm on the shapes and layouts the bench
passes as JSON (`[[name, m, k, n, a transposed, b transposed], ...]`; a transposed operand is a
transposed view), 2 threads, median ms per call as JSON."""
import json
import sys
import time

import torch

torch.set_num_threads(2)
out = {}
for name, m, k, n, ta, tb in json.loads(sys.argv[1]):
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
