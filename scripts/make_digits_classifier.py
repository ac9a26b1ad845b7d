"""Regenerate src/iddpm/eval/digits_classifier.safetensors, the "digits-fid" feature network.

Trains `DigitsClassifier` deterministically (seed 0, one CPU thread) on the bundled digits'
TRAIN split, checks its accuracy on the TEST split, writes the weights with their training
record in the safetensors metadata, and prints one JSON object.

    python scripts/make_digits_classifier.py [--out PATH] [--seed N] [--epochs N]

Changing the weights changes every digits-fid number: compare digits-fid values only when
they were computed with the same weights (the tensors' sha256 is printed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time

import numpy as np
import torch

from iddpm.data.bundled import load_digits
from iddpm.eval.features import (
    DIGITS_WEIGHTS,
    digits_to_input,
    load_digits_classifier,
    save_digits_classifier,
    train_digits_classifier,
)

MIN_TEST_ACCURACY = 0.95


def _accuracy(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    with torch.no_grad():
        pred = model(digits_to_input(images)).argmax(-1).numpy()
    return float((pred == labels).mean())


def _weights_sha256(model: torch.nn.Module) -> str:
    """Hash of the tensors alone (safetensors orders its metadata arbitrarily, so the file's
    own bytes may differ between identical runs)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DIGITS_WEIGHTS), help="output .safetensors path")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--epochs", type=int, default=30, help="passes over the train split")
    args = parser.parse_args()

    train, test = load_digits("train"), load_digits("test")
    start = time.perf_counter()
    model = train_digits_classifier(train.images, train.labels, seed=args.seed, epochs=args.epochs)
    seconds = time.perf_counter() - start
    record = {
        "train_accuracy": _accuracy(model, train.images, train.labels),
        "test_accuracy": _accuracy(model, test.images, test.labels),
        "seed": args.seed,
        "epochs": args.epochs,
        "train_images": len(train.images),
        "test_images": len(test.images),
        "split": "iddpm.data.bundled: every 5th image of each class is test",
        "torch": torch.__version__,
    }
    if record["test_accuracy"] < MIN_TEST_ACCURACY:
        print(f"test accuracy {record['test_accuracy']:.4f} < {MIN_TEST_ACCURACY}", file=sys.stderr)
        return 1
    path = save_digits_classifier(model, args.out, {k: str(v) for k, v in record.items()})
    reloaded = load_digits_classifier(path)  # the file reproduces the trained model exactly
    assert _accuracy(reloaded, test.images, test.labels) == record["test_accuracy"]
    record.update(
        path=str(path),
        bytes=path.stat().st_size,
        weights_sha256=_weights_sha256(reloaded),
        train_seconds=round(seconds, 2),
    )
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
