"""PyTorch's side of the whole-job comparison (`cargo bench --bench pipeline`): naive
finetuning on split MNIST, one seed, as a cold process, the way ../shared/notes/perf-anchors.md
describes it. The bundled ~10,000 MNIST digits, a stratified 80/20 split per class, five 2-class
tasks, a multi-head MLP 784-400-400 with one 2-way head per task, a fresh Adam (lr 1e-3) per
task, 4 epochs of batch 128 with the last partial batch kept, and after each task the test
accuracy of every task seen so far. Time it as a process (`/usr/bin/time -v`); it prints the
final accuracy matrix's last row as a sanity check.

    python3 scripts/torch_split_mnist.py data/mnist
"""
import gzip, os, struct, sys

import torch

torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "2")))
root = sys.argv[1] if len(sys.argv) > 1 else "data/mnist"


def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    dims = [struct.unpack(">I", data[4 + 4 * i:8 + 4 * i])[0] for i in range(magic & 0xff)]
    body = data[4 + 4 * len(dims):]
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(dims)


images = idx(os.path.join(root, "mnist10k-images-idx3-ubyte.gz")).reshape(-1, 784).float() / 255
labels = idx(os.path.join(root, "mnist10k-labels-idx1-ubyte.gz")).long()
g = torch.Generator().manual_seed(0)
train_idx, test_idx = [], []
for c in range(10):
    members = (labels == c).nonzero().flatten()
    members = members[torch.randperm(len(members), generator=g)]
    n_test = round(0.2 * len(members))
    test_idx.append(members[:n_test])
    train_idx.append(members[n_test:])

tasks = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
torch.manual_seed(0)
trunk = torch.nn.Sequential(
    torch.nn.Linear(784, 400), torch.nn.ReLU(), torch.nn.Linear(400, 400), torch.nn.ReLU())
heads = torch.nn.ModuleList()
loss_fn = torch.nn.CrossEntropyLoss()


def task_data(t, which):
    idx = torch.cat([which[c] for c in tasks[t]])
    y = (labels[idx] == tasks[t][1]).long()
    return images[idx], y


row = []
for t in range(len(tasks)):
    heads.append(torch.nn.Linear(400, 2))
    params = list(trunk.parameters()) + list(heads[t].parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    x, y = task_data(t, train_idx)
    for epoch in range(4):
        perm = torch.randperm(len(y))
        for s in range(0, len(y), 128):
            b = perm[s:s + 128]
            opt.zero_grad(set_to_none=True)
            loss_fn(heads[t](trunk(x[b])), y[b]).backward()
            opt.step()
    with torch.no_grad():
        row = []
        for j in range(t + 1):
            xt, yt = task_data(j, test_idx)
            row.append((heads[j](trunk(xt)).argmax(1) == yt).float().mean().item())
print("accuracy after the last task:", " ".join(f"{a * 100:.2f}" for a in row))
