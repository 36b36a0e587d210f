"""Print the ATEN_CPU_CAPABILITY values below this CPU's native one that CI runs the tests under again:
`default` (no vector kernels) everywhere, and `avx2` on an AVX-512 machine."""

import os

os.environ.pop("ATEN_CPU_CAPABILITY", None)  # ask torch what this CPU can do, not what a caller forced

import torch  # noqa: E402

native = torch.backends.cpu.get_cpu_capability().lower()  # e.g. "avx512", "avx2", "default"
below = ["default"] if native != "default" else []
if native.startswith("avx512"):
    below.append("avx2")
print(" ".join(below))
