"""Train a small classifier on a store through BatchStream, and print validation accuracy.

    python tools/train_example.py STORE [--epochs 5] [--memory-limit 64MB] [--model numpy|torch]

``numpy``: multinomial logistic regression on each block's mean (log-mel)
frame, trained with plain gradient descent. ``torch``: a tiny CNN on the
(1, T, F) blocks, on the CPU. Validation blocks come from files held out by
the stream's file-level split, so the accuracy shows that labels and blocks
line up (chance is 1 / n_classes). With no STORE, the demo data is built in
a temporary folder first.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

import memstore as ms


def features_of(x: np.ndarray) -> np.ndarray:
    """(B, 1, T, F) blocks -> (B, F) mean log-compressed frames."""
    return np.log10(1 + 100 * np.maximum(x[:, 0], 0)).mean(axis=1)


def train_numpy(train, valid_x, valid_y, n_classes, epochs, lr=0.2, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.01, (valid_x.shape[1], n_classes))
    b = np.zeros(n_classes)
    # standardise with statistics of one pass over the training blocks (an epoch of the stream)
    seen = np.concatenate([features_of(x) for x, _ in train])
    mu, sd = seen.mean(0), seen.std(0) + 1e-6
    history = []
    for epoch in range(epochs):
        for x, y in train:
            f = (features_of(x) - mu) / sd
            logits = f @ w + b
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            g = (p - y) / len(y)
            w -= lr * f.T @ g
            b -= lr * g.sum(0)
        pred = (((valid_x - mu) / sd) @ w + b).argmax(1)
        acc = float((pred == valid_y.argmax(1)).mean())
        history.append(acc)
        print(f"epoch {epoch + 1}: validation accuracy {acc:.3f} (chance {1 / n_classes:.3f})")
    return history


def train_torch(train, valid_x, valid_y, n_classes, epochs, seed=0):
    from memstore.errors import require

    torch = require("torch", "torch")
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 5, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d((4, 4)),
        torch.nn.Flatten(), torch.nn.Linear(128, n_classes))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    prep = lambda x: torch.from_numpy(np.log10(1 + 100 * np.maximum(x, 0)).astype(np.float32))  # noqa: E731
    history = []
    for epoch in range(epochs):
        model.train()
        for x, y in train:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(prep(x)), torch.from_numpy(y.argmax(1)))
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            pred = model(prep(valid_x)).argmax(1).numpy()
        acc = float((pred == valid_y.argmax(1)).mean())
        history.append(acc)
        print(f"epoch {epoch + 1}: validation accuracy {acc:.3f} (chance {1 / n_classes:.3f})")
    return history


def run(store_path, *, epochs=5, memory_limit="64MB", model="numpy", batch_size=16, seed=0):
    with ms.open_store(store_path) as store:
        train = ms.BatchStream(store, batch_size=batch_size, split="train", valid_fraction=0.25, seed=seed,
                               memory_limit=memory_limit)
        valid = ms.BatchStream(store, batch_size=batch_size, split="valid", valid_fraction=0.25, seed=seed)
        vx, vy = valid.get_data()[:2]  # this stream is the validation split
        n_classes = len(store.classes)
        print(f"{store_path}: {train.total_points} training blocks, {len(vx)} validation blocks, "
              f"{n_classes} classes, {'out of core' if train.out_of_core else 'in memory'}")
        if model == "torch":
            return train_torch(train, vx, vy, n_classes, epochs, seed)
        return train_numpy(train, features_of(vx), vy, n_classes, epochs, seed=seed)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", nargs="?", default=None, help="store file (default: build the demo data)")
    p.add_argument("--epochs", type=int, default=20, help="training epochs (default: 20)")
    p.add_argument("--memory-limit", default="64MB", help="BatchStream memory_limit (default: 64MB)")
    p.add_argument("--model", choices=["numpy", "torch"], default="numpy", help="classifier (default: numpy)")
    p.add_argument("--batch-size", type=int, default=16, help="blocks per batch (default: 16)")
    args = p.parse_args(argv)
    kw = dict(epochs=args.epochs, memory_limit=args.memory_limit, model=args.model, batch_size=args.batch_size)
    if args.store:
        run(args.store, **kw)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        from memstore.demo import make_demo_folder

        root = make_demo_folder(tmp, n_per_class=8)
        ms.build_store(root, Path(tmp) / "demo.h5", progress=False)
        run(Path(tmp) / "demo.h5", **kw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
