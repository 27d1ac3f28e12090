#!/usr/bin/env python3
"""Replay one cfpipe train stage in PyTorch and compare the final weights.

The stage must have run with `training.record_replay: true`, which stores beside its model
the weights the first step found (`replay_initial.safetensors`) and every step's samples
(`replay.json`). This script rebuilds the MLP from those weights, feeds the same batches of the
task's training data (read from the cached split), takes the same Adam or SGD steps with L2 as
PyTorch defines them (`weight_decay`), keeps frozen units and their optimizer moments where
they were (cfpipe masks the update, not only the gradient), and compares the result with the
model cfpipe stored.

    python3 scripts/torch_crosscheck.py --cache cache --stage rnf/seed0/task2/train

Prints one JSON line; exits 1 if the largest difference exceeds --tolerance (default 1e-4).
"""
import argparse
import glob
import json
import os
import sys

import torch
from safetensors.torch import load_file


def manifests(cache):
    for path in glob.glob(os.path.join(cache, "entries", "*", "*", "manifest.json")):
        with open(path) as f:
            yield os.path.dirname(path), json.load(f)


def find_entries(cache, stage):
    train, splits = None, {}
    for d, m in manifests(cache):
        if m["kind"] == "split":
            splits[m["content_hash"]] = d
        elif m["kind"] == "train" and "replay.json" in m["outputs"] and m["stage_id"] == stage:
            if train is None or m["run"]["started_unix_ms"] > train[1]["run"]["started_unix_ms"]:
                train = (d, m)
    if train is None:
        sys.exit(f"no train entry `{stage}` with replay.json in {cache} "
                 "(run the pipeline with --set training.record_replay=true)")
    split = splits.get(train[1]["inputs"]["split"])
    if split is None:
        sys.exit(f"the split that `{stage}` trained on is not in {cache}")
    return train[0], split


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", required=True)
    ap.add_argument("--stage", required=True, help="e.g. naive/seed0/task1/train")
    ap.add_argument("--tolerance", type=float, default=1e-4)
    a = ap.parse_args()
    torch.set_num_threads(1)
    entry, split_dir = find_entries(a.cache, a.stage)
    out = os.path.join(entry, "out")
    with open(os.path.join(out, "replay.json")) as f:
        replay = json.load(f)
    if not replay["plain"]:
        sys.exit(f"`{a.stage}` trained with EWC, several tasks or dropout; a plain replay cannot follow it")
    initial = load_file(os.path.join(out, "replay_initial.safetensors"))
    final = load_file(os.path.join(out, "model.safetensors"))
    data = load_file(os.path.join(split_dir, "out", "split.safetensors"))
    t = replay["task_index"]
    x_all = data[f"task{t}.train.x"].to(torch.float32).reshape(len(data[f"task{t}.train.y"]), -1) / 255.0
    y_all = data[f"task{t}.train.y"].to(torch.int64)

    n_trunk = len([k for k in initial if k.startswith("trunk.") and k.endswith(".weight")])
    head = replay["head"]
    names = [f"trunk.{i}.{p}" for i in range(n_trunk) for p in ("weight", "bias")]
    names += [f"heads.{head}.weight", f"heads.{head}.bias"]
    params = {n: initial[n].clone().to(torch.float32).requires_grad_(True) for n in names}
    slope = replay["negative_slope"]

    def logits(x):
        h = x
        for i in range(n_trunk):
            h = torch.nn.functional.linear(h, params[f"trunk.{i}.weight"], params[f"trunk.{i}.bias"])
            h = torch.nn.functional.leaky_relu(h, slope) if slope else torch.relu(h)
        return torch.nn.functional.linear(h, params[f"heads.{head}.weight"], params[f"heads.{head}.bias"])

    o = replay["optimizer"]
    plist = [params[n] for n in names]
    if o["optimizer"] == "adam":
        opt = torch.optim.Adam(plist, lr=o["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"],
                               weight_decay=replay["weight_decay"])
    else:
        opt = torch.optim.SGD(plist, lr=o["lr"], momentum=o["momentum"],
                              weight_decay=replay["weight_decay"])
    # Frozen rows: a unit's incoming weights and its bias, per hidden layer.
    frozen = {}
    if replay["lr_frozen"] != 0.0 and any(any(f) for f in replay["frozen"]):
        sys.exit("only lr_frozen = 0 is replayed (frozen units do not move)")
    for i, flags in enumerate(replay["frozen"][:n_trunk]):
        rows = torch.tensor(flags, dtype=torch.bool)
        if rows.any():
            frozen[f"trunk.{i}.weight"] = rows
            frozen[f"trunk.{i}.bias"] = rows

    for idx in replay["steps"]:
        idx = torch.tensor(idx, dtype=torch.int64)
        kept = {n: params[n].detach()[rows].clone() for n, rows in frozen.items()}
        moments = {}
        for n, rows in frozen.items():
            st = opt.state.get(params[n], {})
            moments[n] = {k: v[rows].clone() for k, v in st.items() if torch.is_tensor(v) and v.dim() > 0}
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits(x_all[idx]), y_all[idx])
        loss.backward()
        opt.step()
        with torch.no_grad():
            for n, rows in frozen.items():
                params[n][rows] = kept[n]
                st = opt.state[params[n]]
                for k, v in moments[n].items():
                    st[k][rows] = v
                # A moment first created by this step starts at zero for frozen rows.
                for k, v in st.items():
                    if torch.is_tensor(v) and v.dim() > 0 and k not in moments[n]:
                        v[rows] = 0

    worst, where = 0.0, None
    for n in names:
        d = (params[n].detach() - final[n].to(torch.float32)).abs().max().item()
        if d > worst:
            worst, where = d, n
    moved = max((final[n].to(torch.float32) - initial[n].to(torch.float32)).abs().max().item() for n in names)
    frozen_moved = max([(final[n].to(torch.float32) - initial[n].to(torch.float32))[rows].abs().max().item()
                        for n, rows in frozen.items()] or [0.0])
    result = {
        "stage": a.stage,
        "steps": len(replay["steps"]),
        "optimizer": o["optimizer"],
        "weight_decay": replay["weight_decay"],
        "frozen_units": [int(sum(f)) for f in replay["frozen"]],
        "max_abs_diff": worst,
        "at": where,
        "largest_change_by_training": moved,
        "largest_change_of_a_frozen_weight": frozen_moved,
        "torch": torch.__version__,
        "tolerance": a.tolerance,
        "ok": worst <= a.tolerance,
    }
    print(json.dumps(result))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
