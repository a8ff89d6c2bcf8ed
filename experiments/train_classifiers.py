"""Train and ship the Fashion-MNIST feature networks, then the FID/KID reference features.

    python -m experiments.train_classifiers                      # all three steps
    python -m experiments.train_classifiers classifier           # fashion-classifier only
    python -m experiments.train_classifiers perceptual features  # any subset, in order

- ``classifier``: ``fashion-classifier`` (``lab.perceptual.CLASSIFIER``, seed 0), whose
  penultimate features serve FID/KID;
- ``perceptual``: ``fashion-perceptual`` (``lab.perceptual.PERCEPTUAL``: other widths,
  kernels, norm and downsampling; seed 1), which serves the perceptual loss;
- ``features``: the shipped classifier's features of the 10,000 test images
  (``fashion-test-features``, fp16) and the real-vs-real FID/KID floor at 512 and
  2,048 samples, stored in its json.

Weights are rounded to fp16 before the test accuracy is measured, so the recorded
accuracy is that of the shipped file. Uses 2 CPU threads.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lab import fid as fidlib
from lab import perceptual, zoo
from lab.data import fashion_mnist
from lab.seeding import derive_seed

NETS = {
    "classifier": {"name": "fashion-classifier", "config": perceptual.CLASSIFIER, "seed": 0,
                   "epochs": 3, "batch_size": 256, "lr": 3e-3},
    "perceptual": {"name": "fashion-perceptual", "config": perceptual.PERCEPTUAL, "seed": 1,
                   "epochs": 5, "batch_size": 256, "lr": 3e-3},
}
STEPS = ("classifier", "perceptual", "features")
REFERENCE = "fashion-test"
FLOOR_COUNTS = (512, 2048)
FLOOR_REPEATS = 5
TRAIN_POOL = 20_000  # random train images whose features the floor draws from


def round_to_half(net: torch.nn.Module) -> None:
    """Round floating parameters and buffers to fp16 values in place (what ships)."""
    with torch.no_grad():
        for t in list(net.parameters()) + list(net.buffers()):
            if t.is_floating_point():
                t.copy_(t.half().float())


def train(step: str) -> None:
    spec = NETS[step]
    torch.manual_seed(derive_seed(spec["seed"], 2))  # weight initialisation
    net = perceptual.Classifier(**spec["config"])
    images, labels = fashion_mnist("train")
    test_images, test_labels = fashion_mnist("test")
    record = perceptual.train_classifier(
        net, images, labels, epochs=spec["epochs"], batch_size=spec["batch_size"],
        lr=spec["lr"], seed=spec["seed"], desc=spec["name"])
    round_to_half(net)
    acc = perceptual.accuracy(net, test_images, test_labels)
    acc_2000 = perceptual.accuracy(net, test_images[:2000], test_labels[:2000])
    training = {"command": f"python -m experiments.train_classifiers {step}", **record,
                "test_accuracy": round(acc, 4), "test_accuracy_first_2000": round(acc_2000, 4),
                "seed": spec["seed"],
                "batch_size": spec["batch_size"], "lr": spec["lr"], "optimizer": "AdamW",
                "weight_decay": 0.05, "schedule": "one-cycle, 25% warm-up",
                "label_smoothing": 0.1, "augmentation": "random horizontal flip",
                "threads": torch.get_num_threads(), "data": "Fashion-MNIST train (60,000)"}
    path = zoo.save(net, spec["name"], training=training, half=True)
    print(f"{spec['name']}: test accuracy {acc:.4f}, loss {record['final_loss']:.4f}, "
          f"{record['wall_seconds']:.0f} s, {path.stat().st_size / 1024:.0f} KiB", flush=True)


def _stats(values: list[float], digits: int) -> dict:
    return {"mean": round(statistics.fmean(values), digits),
            "std": round(statistics.stdev(values), digits) if len(values) > 1 else 0.0,
            "values": [round(v, digits) for v in values]}


def measure_floor(ref: torch.Tensor, train_feats: torch.Tensor) -> dict:
    """Real-vs-real FID/KID at each count, over FLOOR_REPEATS random draws."""
    floor: dict = {}
    for n in FLOOR_COUNTS:
        rows: dict[str, dict[str, list[float]]] = {}
        for r in range(FLOOR_REPEATS):
            g = torch.Generator().manual_seed(derive_seed(r, n))
            tr = train_feats[torch.randperm(len(train_feats), generator=g)[:2 * n]]
            te = ref[torch.randperm(len(ref), generator=g)[:2 * n]]
            pairs = {"train_vs_reference": (tr[:n], ref, ("shipped", REFERENCE)),
                     "test_vs_test": (te[:n], te[n:], None),
                     "train_vs_train": (tr[:n], tr[n:], None)}
            for label, (a, b, key) in pairs.items():
                row = rows.setdefault(label, {"fid": [], "kid": []})
                row["fid"].append(fidlib.fid_from_features(a, b))
                row["kid"].append(fidlib.kid_from_features(a, b, reference_key=key).mean)
            print(f"  floor n={n} repeat {r}: " + ", ".join(
                f"{k} FID {v['fid'][-1]:.3f} KID {v['kid'][-1]:.5f}" for k, v in rows.items()),
                flush=True)
        floor[str(n)] = {label: {"fid": _stats(v["fid"], 4), "kid": _stats(v["kid"], 6)}
                         for label, v in rows.items()}
    return floor


def features() -> None:
    start = time.perf_counter()
    test_images, _ = fashion_mnist("test")
    train_images, _ = fashion_mnist("train")
    classifier = zoo.load(fidlib.DEFAULT_CLASSIFIER)
    ref = fidlib.features(test_images, classifier).half().double()  # as shipped
    g = torch.Generator().manual_seed(derive_seed(0, TRAIN_POOL))
    pool = train_images[torch.randperm(len(train_images), generator=g)[:TRAIN_POOL]]
    train_feats = fidlib.features(pool, classifier).double()
    floor = measure_floor(ref, train_feats)
    extra = {
        "source": "Fashion-MNIST t10k (test) images, all 10,000, in file order",
        "command": "python -m experiments.train_classifiers features",
        "floor": floor,
        "floor_protocol": (
            "real-vs-real at n samples, 5 random draws (mean, std, values): "
            "train_vs_reference = n random train images vs the 10,000 test features "
            "(what lab.metrics.fid/kid report for perfect samples); test_vs_test and "
            "train_vs_train = two disjoint n-image subsets of one split. KID with "
            "subsets=100, subset_size=min(1000, n), seed=0. Train images from a fixed "
            f"random pool of {TRAIN_POOL}."),
        "wall_seconds": None,
    }
    extra["wall_seconds"] = round(time.perf_counter() - start, 1)
    path = fidlib.write_reference(REFERENCE, test_images, fidlib.DEFAULT_CLASSIFIER,
                                  extra=extra)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)", flush=True)
    for n, rows in floor.items():
        for label, v in rows.items():
            print(f"floor n={n} {label}: FID {v['fid']['mean']:.3f} +- {v['fid']['std']:.3f}, "
                  f"KID {v['kid']['mean']:.5f} +- {v['kid']['std']:.5f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("steps", nargs="*", choices=STEPS, help="default: all, in this order")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    for step in [s for s in STEPS if s in (args.steps or STEPS)]:
        if step == "features":
            features()
        else:
            train(step)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
