"""Train a small classifier on a store through BatchStream, print validation accuracy, and test it.

    python tools/train_example.py STORE [--epochs 5] [--memory-limit 64MB] [--model numpy|torch]
    python tools/train_example.py STORE --test IRMAS/Testing [--aggregate mean|max|vote]

``numpy``: multinomial logistic regression on each block's mean (log-mel)
frame, trained with plain gradient descent. ``torch``: a tiny CNN on the
(1, T, F) blocks, on the CPU. Validation blocks come from files held out by
the stream's file-level split, so the accuracy shows that labels and blocks
line up (chance is 1 / n_classes). With no STORE, the demo data is built in
a temporary folder first (and, with ``--test demo``, demo testing excerpts).

``--test DIR`` runs the IRMAS testing protocol after training:

1. build a test store from DIR with the training store's classes and feature
   configuration (``--test-labels``, default ``irmas``: the ``.txt`` beside each
   excerpt), or reuse ``--test-store`` if it exists with the same classes and
   configuration; a file with a label outside the classes is skipped, and said so;
2. score every block of every file (``return_file=True``, no shuffle, no block
   dropped) and pool the scores per file with ``memstore.aggregate_by_file``
   (``--aggregate``);
3. choose one global threshold on the validation files of the training store,
   pooled the same way, as the one that maximises micro F1 there;
4. report precision@1 (the file's top class is one of its labels), micro F1
   (over every file and class) and macro F1 (the mean of per-class F1 over
   the classes that occur in the labels or predictions), and per-class F1.
   Test files without any label are left out of the metrics and counted.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np

import memstore as ms
from memstore.evaluate import HOW


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

    def score(x: np.ndarray) -> np.ndarray:
        return _softmax(((features_of(x) - mu) / sd) @ w + b)

    return history, score


def _softmax(logits: np.ndarray) -> np.ndarray:
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


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

    def score(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(model(prep(x)), dim=1).numpy().astype(np.float64)

    return history, score


VALID_FRACTION = 0.25


def _train(store, *, epochs, memory_limit, model, batch_size, seed):
    train = ms.BatchStream(store, batch_size=batch_size, split="train", valid_fraction=VALID_FRACTION, seed=seed,
                           memory_limit=memory_limit)
    valid = ms.BatchStream(store, batch_size=batch_size, split="valid", valid_fraction=VALID_FRACTION, seed=seed)
    vx, vy = valid.get_data()[:2]  # this stream is the validation split
    n_classes = len(store.classes)
    print(f"{store.path}: {train.total_points} training blocks, {len(vx)} validation blocks, "
          f"{n_classes} classes, {'out of core' if train.out_of_core else 'in memory'}")
    if model == "torch":
        return train_torch(train, vx, vy, n_classes, epochs, seed)
    return train_numpy(train, features_of(vx), vy, n_classes, epochs, seed=seed)


def run(store_path, *, epochs=5, memory_limit="64MB", model="numpy", batch_size=16, seed=0):
    """Train and return the validation accuracy after each epoch."""
    with ms.open_store(store_path) as store:
        return _train(store, epochs=epochs, memory_limit=memory_limit, model=model, batch_size=batch_size,
                      seed=seed)[0]


# --- the testing protocol ------------------------------------------------------------------

@dataclasses.dataclass
class Scores:
    """Pooled scores of the files of one split that have a label (rows of ``store.index``)."""
    files: np.ndarray       # (n,) int64 store file indices
    scores: np.ndarray      # (n, n_classes) float64
    labels: np.ndarray      # (n, n_classes) uint8 multi-hot
    unlabelled: int         # files of the split left out: no label


def score_files(store, score, *, split, aggregate, batch_size, seed=0) -> Scores:
    """Score every block of ``split`` in store order and pool the scores per file."""
    stream = ms.BatchStream(store, batch_size=batch_size, split=split, valid_fraction=VALID_FRACTION, seed=seed,
                            shuffle=False, drop_last=False, return_file=True)
    try:
        parts = [(score(x), f) for x, _, f in stream]
    finally:
        stream.close()
    blocks = np.concatenate([s for s, _ in parts]) if parts else np.zeros((0, len(store.classes)))
    block_file = np.concatenate([f for _, f in parts]) if parts else np.zeros(0, np.int64)
    pooled = ms.aggregate_by_file(blocks, block_file, n_files=len(store), how=aggregate)
    served = np.flatnonzero(~np.isnan(pooled).any(axis=1))
    labelled = served[store.labels[served].any(axis=1)]
    return Scores(labelled, pooled[labelled], store.labels[labelled], len(served) - len(labelled))


def f1_scores(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """Micro F1, macro F1 and per-class (precision, recall, F1, support) of ``scores >= threshold``.

    Macro F1 averages the classes that occur in the labels or the predictions; a class
    absent from both has no F1 (NaN) and is left out of the mean.
    """
    pred = scores >= threshold
    truth = labels.astype(bool)
    tp = (pred & truth).sum(0)
    fp = (pred & ~truth).sum(0)
    fn = (~pred & truth).sum(0)
    denominator = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(denominator > 0, 2 * tp / denominator, np.nan)
        precision = np.where(tp + fp > 0, tp / (tp + fp), np.nan)
        recall = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
    micro = 2 * tp.sum() / max(denominator.sum(), 1)
    present = ~np.isnan(per_class)
    return {"micro_f1": float(micro), "macro_f1": float(per_class[present].mean()) if present.any() else 0.0,
            "per_class": per_class, "precision": precision, "recall": recall, "support": truth.sum(0)}


def precision_at_1(scores: np.ndarray, labels: np.ndarray) -> float:
    """Share of files whose top-scoring class is one of their labels."""
    if len(scores) == 0:
        return float("nan")
    return float(labels[np.arange(len(scores)), scores.argmax(axis=1)].mean())


def choose_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold that maximises micro F1 of ``scores >= t`` (the lowest such t among the scores)."""
    candidates = np.unique(scores)
    if len(candidates) == 0:
        return 0.5
    best = max(candidates, key=lambda t: (f1_scores(scores, labels, t)["micro_f1"], -t))
    return float(best)


def prepare_test_store(test_dir, test_store, train, *, labels, workers=None):
    """Build the test store with the training classes and features, or reuse it if it has both."""
    test_store = Path(test_store)
    if test_store.exists():
        with ms.open_store(test_store) as old:
            same = old.classes == train.classes and old.config == train.config
        if same:
            print(f"{test_store}: reusing the test store (same classes and features)")
            return None
        print(f"{test_store}: other classes or features than the training store's; building it again")
    report = ms.build_store(test_dir, test_store, transform=train.config, labels=labels, classes=train.classes,
                            sample_rate=train.config.sample_rate, workers=workers, progress=False)
    print(f"{test_store}: {report.stored} test file(s) stored, {len(report.skipped)} skipped")
    for path, why in report.skipped[:10]:
        print(f"  skipped {path}: {why}")
    if len(report.skipped) > 10:
        print(f"  ... and {len(report.skipped) - 10} more")
    return report


def run_test(store_path, test_dir, *, test_store=None, test_labels="irmas", aggregate="mean", epochs=5,
             memory_limit="64MB", model="numpy", batch_size=16, seed=0, workers=None) -> dict:
    """Train on ``store_path``, then run the testing protocol on ``test_dir`` (see the module docstring).

    Returns a dict: ``history``, ``threshold``, ``valid`` and ``test`` (each with ``files``,
    ``unlabelled``, ``precision_at_1``, ``micro_f1``, ``macro_f1``, ``per_class``), ``classes``,
    ``test_store``, ``skipped`` (the test build's skips, empty when the store was reused).
    """
    store_path = Path(store_path)
    test_store = Path(test_store) if test_store else store_path.with_name(store_path.stem + "-test.h5")
    with ms.open_store(store_path) as train:
        history, score = _train(train, epochs=epochs, memory_limit=memory_limit, model=model,
                                batch_size=batch_size, seed=seed)
        report = prepare_test_store(test_dir, test_store, train, labels=test_labels, workers=workers)
        valid = score_files(train, score, split="valid", aggregate=aggregate, batch_size=batch_size, seed=seed)
        classes = list(train.classes)
    threshold = choose_threshold(valid.scores, valid.labels)
    with ms.open_store(test_store) as test:
        tested = score_files(test, score, split="all", aggregate=aggregate, batch_size=batch_size, seed=seed)
    result = {"history": history, "threshold": threshold, "classes": classes, "test_store": test_store,
              "skipped": [] if report is None else report.skipped}
    for name, s in (("valid", valid), ("test", tested)):
        f1 = f1_scores(s.scores, s.labels, threshold)
        result[name] = {"files": len(s.files), "unlabelled": s.unlabelled,
                        "precision_at_1": precision_at_1(s.scores, s.labels), **f1}
    print_table(result, aggregate)
    return result


def print_table(result: dict, aggregate: str) -> None:
    v, t = result["valid"], result["test"]
    print(f"\ntesting protocol: scores pooled per file by {aggregate}; threshold {result['threshold']:.4f} "
          f"(the best micro F1 on validation)")
    print(f"{'':<16}{'validation':>12}{'test':>12}")
    print(f"{'files':<16}{v['files']:>12d}{t['files']:>12d}")
    for key, name in (("precision_at_1", "precision@1"), ("micro_f1", "micro F1"), ("macro_f1", "macro F1")):
        print(f"{name:<16}{v[key]:>12.3f}{t[key]:>12.3f}")
    if t["unlabelled"]:
        print(f"({t['unlabelled']} test file(s) without a label left out)")
    print(f"\n{'class':<16}{'support':>8}{'precision':>11}{'recall':>8}{'F1':>8}   (test)")
    for j, c in enumerate(result["classes"]):
        cells = [f"{t[k][j]:.3f}" if not np.isnan(t[k][j]) else "-" for k in ("precision", "recall", "per_class")]
        print(f"{c:<16}{int(t['support'][j]):>8d}{cells[0]:>11}{cells[1]:>8}{cells[2]:>8}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", nargs="?", default=None, help="store file (default: build the demo data)")
    p.add_argument("--epochs", type=int, default=20, help="training epochs (default: 20)")
    p.add_argument("--memory-limit", default="64MB", help="BatchStream memory_limit (default: 64MB)")
    p.add_argument("--model", choices=["numpy", "torch"], default="numpy", help="classifier (default: numpy)")
    p.add_argument("--batch-size", type=int, default=16, help="blocks per batch (default: 16)")
    p.add_argument("--test", default=None, metavar="DIR",
                   help="after training, run the testing protocol on this folder ('demo' with no STORE: "
                        "demo testing excerpts)")
    p.add_argument("--test-store", default=None, metavar="PATH",
                   help="test store to build or reuse (default: STORE's name + '-test.h5' beside it)")
    p.add_argument("--test-labels", default="irmas", metavar="{irmas,folder,PATH}",
                   help="label mode of the test folder (default: irmas, the .txt beside each excerpt)")
    p.add_argument("--aggregate", choices=list(HOW), default="mean",
                   help="how block scores are pooled per file (default: mean)")
    args = p.parse_args(argv)
    kw = dict(epochs=args.epochs, memory_limit=args.memory_limit, model=args.model, batch_size=args.batch_size)
    test_kw = dict(test_store=args.test_store, test_labels=args.test_labels, aggregate=args.aggregate)
    if args.store:
        if args.test:
            run_test(args.store, args.test, **test_kw, **kw)
        else:
            run(args.store, **kw)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        from memstore.demo import make_demo_folder, make_demo_testing

        root = make_demo_folder(tmp, n_per_class=8)
        ms.build_store(root, Path(tmp) / "demo.h5", progress=False)
        if args.test:
            test_dir = make_demo_testing(tmp, n_files=12) if args.test == "demo" else args.test
            run_test(Path(tmp) / "demo.h5", test_dir, **test_kw, **kw)
        else:
            run(Path(tmp) / "demo.h5", **kw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
