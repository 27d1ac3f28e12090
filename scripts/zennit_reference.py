#!/usr/bin/env python3
"""Reference LRP relevances from zennit 0.5.1 for tests/lrp_zennit.rs.

A small fixed network (weights from a formula, every bias non-zero so the bias conventions
matter) is explained with zennit's composites and single rules; the weights, the input and
the input relevance of each case go to tests/data/zennit_lrp.json. Run with a Python that has
torch and zennit==0.5.1:

    python3 scripts/zennit_reference.py > tests/data/zennit_lrp.json
"""
import json
import math
import sys

import torch
from zennit.attribution import Gradient
from importlib.metadata import version
from zennit.composites import (EpsilonAlpha2Beta1, EpsilonPlus, EpsilonPlusFlat,
                               LayerMapComposite, layer_map_base)
from zennit.rules import Epsilon, WSquare, ZBox
from zennit.types import Convolution, Linear

ZENNIT = version("zennit")
assert ZENNIT == "0.5.1", ZENNIT
torch.set_default_dtype(torch.float32)


def values(n, seed, scale):
    return [scale * math.sin(0.37 * i + 1.3 * seed) for i in range(n)]


def cnn():
    """1x6x6 -> conv 3 (3x3, pad 1) -> ReLU -> max-pool 2 -> conv 4 (3x3) -> ReLU -> flatten
    -> dense 5 -> ReLU -> dense 3."""
    layers = [
        torch.nn.Conv2d(1, 3, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 5),
        torch.nn.ReLU(),
        torch.nn.Linear(5, 3),
    ]
    params = []
    seed = 0
    for layer in layers:
        if hasattr(layer, "weight"):
            seed += 1
            w = torch.tensor(values(layer.weight.numel(), seed, 0.6)).reshape(layer.weight.shape)
            b = torch.tensor(values(layer.bias.numel(), seed + 10, 0.2))
            with torch.no_grad():
                layer.weight.copy_(w)
                layer.bias.copy_(b)
            params.append({
                "kind": "conv" if isinstance(layer, torch.nn.Conv2d) else "dense",
                "shape": list(layer.weight.shape),
                "weight": layer.weight.detach().flatten().tolist(),
                "bias": layer.bias.detach().tolist(),
            })
    return torch.nn.Sequential(*layers).eval(), params


def main():
    model, params = cnn()
    x = torch.tensor([((i * 37) % 101) / 100.0 - 0.3 for i in range(2 * 36)]).reshape(2, 1, 6, 6)
    labels = [0, 2]
    cases = {
        "EpsilonPlus": EpsilonPlus(),
        "EpsilonPlusFlat": EpsilonPlusFlat(),
        "EpsilonAlpha2Beta1": EpsilonAlpha2Beta1(),
        # w² on the conv layers (its bias handling), ε on the dense ones.
        "conv WSquare, dense Epsilon": LayerMapComposite(
            layer_map=layer_map_base() + [(Convolution, WSquare()), (Linear, Epsilon())]),
        "conv ZBox(-1, 1), dense Epsilon": LayerMapComposite(
            layer_map=layer_map_base() + [(Convolution, ZBox(-1.0, 1.0)), (Linear, Epsilon())]),
    }
    out = {"zennit": ZENNIT, "torch": torch.__version__, "layers": params,
           "input_shape": list(x.shape), "input": x.flatten().tolist(), "labels": labels,
           "cases": {}}
    eye = torch.eye(3)[labels]
    for name, composite in cases.items():
        xi = x.clone().requires_grad_(True)
        with Gradient(model=model, composite=composite) as attributor:
            logits, relevance = attributor(xi, lambda output: output * eye)
        out["cases"][name] = {
            "logits": logits.detach().flatten().tolist(),
            "relevance": relevance.detach().flatten().tolist(),
        }
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
