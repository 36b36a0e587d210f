"""How long each preset takes to build (warm imports), and its size: the tiny random-weight presets promise "well
under a second" (tests and the demo build them hundreds of times); the rehearsal's full-size ones show what a real
architecture costs before its checkpoint loads. Prints; asserts nothing (no timed tests in tests/).

    python benchmarks/build.py                 # every tiny preset
    python benchmarks/build.py --full          # and the rehearsal's full-size architectures (minutes, GBs)
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
TINY = ["clip-tiny", "flava-tiny", "beit3-tiny", "flamingo-tiny", "idefics-tiny"]
FULL = ["clip-rehearsal", "flava-rehearsal", "beit3-base-rehearsal", "flamingo-rehearsal"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also the full-size rehearsal architectures")
    parser.add_argument("--repeat", type=int, default=3, help="builds per preset after a first, warm-up one")
    args = parser.parse_args()

    import torch

    from mmbench.config import Registry, default_registry_roots
    from mmbench.models import build_model

    torch.set_num_threads(1)
    registry = Registry(roots=[HERE / "rehearsal", *default_registry_roots()])
    names = TINY + (FULL if args.full else [])
    print(f"{'preset':<22} {'params':>10} {'first s':>8} {'warm s (best of ' + str(args.repeat) + ')':>22}")
    for name in names:
        cfg = registry.model(name)
        start = time.perf_counter()
        model = build_model(cfg)  # pays for imports and first-use costs
        first = time.perf_counter() - start
        params = sum(p.numel() for p in model.parameters())
        del model
        warm = []
        for _ in range(args.repeat if name in TINY else 1):
            start = time.perf_counter()
            build_model(cfg)
            warm.append(time.perf_counter() - start)
        print(f"{name:<22} {params / 1e6:>9.2f}M {first:>8.2f} {min(warm):>22.3f}")


if __name__ == "__main__":
    main()
