"""Cost of the drift check's MMD permutation test at the default sizes (256 + 256 MiniLM-sized
embeddings, 1000 permutations): `python benchmarks/drift_mmd.py [OUT.json]`."""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from forgeline.data.drift import mmd_permutation_test


def main() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(256, 384)).astype(np.float32), rng.normal(size=(256, 384)).astype(np.float32)
    mmd_permutation_test(x, y, 1000, 0)  # warm-up
    times = []
    for _ in range(5):
        start = time.perf_counter()
        mmd_permutation_test(x, y, 1000, 0)
        times.append(time.perf_counter() - start)
    result = {"what": "drift MMD permutation test, 256+256 x 384, 1000 permutations", "seconds": sorted(times),
              "median_ms": 1000 * float(np.median(times)), "command": "python benchmarks/drift_mmd.py OUT.json",
              "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(result, indent=2))
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
