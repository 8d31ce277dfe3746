"""``memstore info``: what a store holds."""

from __future__ import annotations

import argparse
import json
import os

DESCRIPTIONS = {"info": (
    "Summarise a store: files, frames and hours of audio, classes with counts, the\n"
    "feature configuration and dtype, size on disk, skipped files and statistics.")}


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("store", metavar="STORE", help="store file")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of text")
    parser.add_argument("--all-skipped", action="store_true", help="list every skipped file (default: first 10)")


def summary(store) -> dict:
    """Everything ``memstore info`` prints, as JSON-ready Python values."""
    from ..stats import damaged

    idx = store.index
    known = (idx["n_samples"] > 0) & (idx["source_rate"] > 0)
    seconds = float((idx["n_samples"][known] / idx["source_rate"][known]).sum())
    rate = store.config.sample_rate
    if not known.all() and rate:  # imported features carry no sample counts: hop x frames instead
        seconds += float(idx["n_frames"][~known].sum()) * store.config.hop / rate
    counts = store.labels.sum(axis=0).tolist() if store.labels.size else [0] * len(store.classes)
    skipped = [tuple(s) for r in store.report for s in r.get("skipped", [])]
    st = store.stats
    bad = damaged(st, store.n_bins)
    ok = {key: value for key, value in st.items() if key not in bad}
    return {
        "path": str(store.path), "files": len(store), "frames": int(store.n_frames_total),
        "hours": seconds / 3600, "classes": dict(zip(store.classes, map(int, counts), strict=True)),
        "unlabelled": int((store.labels.sum(axis=1) == 0).sum()),
        "multi_label": int((store.labels.sum(axis=1) > 1).sum()), "dtype": str(store.dtype),
        "n_bins": store.n_bins, "config": store.config.to_dict(), "bytes_on_disk": os.path.getsize(store.path),
        "segments": len(store.segments), "generation": store.generation, "skipped": skipped,
        "stats": {"count": int(ok["count"]) if "count" in ok else None if "count" in bad else 0,
                  "mean_range": [float(ok["mean"].min()), float(ok["mean"].max())] if "mean" in ok else None,
                  "std_range": [float(ok["std"].min()), float(ok["std"].max())] if "std" in ok else None,
                  "damaged": bad},
    }


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def run(args: argparse.Namespace) -> int:
    from ..store import open_store

    with open_store(args.store) as store:
        s = summary(store)
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    print(f"{s['path']}: {s['files']} files, {s['frames']} frames, {_duration(s['hours'] * 3600)} of audio, "
          f"{s['bytes_on_disk'] / 1e6:.1f} MB on disk, {s['segments']} segment(s), generation {s['generation']}")
    print(f"features: {s['n_bins']} bins, {s['dtype']}; configuration:")
    print("  " + ", ".join(f"{k}={v}" for k, v in sorted(s["config"].items())))
    print(f"classes ({len(s['classes'])}): " + ", ".join(f"{c} ({n})" for c, n in s["classes"].items())
          + (f"; {s['unlabelled']} unlabelled" if s["unlabelled"] else "")
          + (f"; {s['multi_label']} with several labels" if s["multi_label"] else ""))
    st = s["stats"]
    ranges = [f"{name} in [{st[name + '_range'][0]:.4g}, {st[name + '_range'][1]:.4g}]"
              for name in ("mean", "std") if st[name + "_range"]]
    if ranges:
        over = "" if st["count"] is None else f" over {st['count']} frames"
        print(f"statistics{over}: " + ", ".join(ranges))
    if st["damaged"]:
        print("damaged statistics (memstore verify checks the whole store): "
              + "; ".join(f"{key} {why}" for key, why in st["damaged"].items()))
    shown = s["skipped"] if args.all_skipped else s["skipped"][:10]
    print(f"skipped at build: {len(s['skipped'])}")
    for path, why in shown:
        print(f"  {path}: {why}")
    if len(shown) < len(s["skipped"]):
        print(f"  ... {len(s['skipped']) - len(shown)} more (--all-skipped)")
    return 0
