"""Triton kernels. Imported lazily through the attention backend registry; never needed on a CPU-only install."""

import importlib.util

# A runtime-only install (`pip install minitx`) has no Triton: say which package brings it, not just its name.
if importlib.util.find_spec("triton") is None:
    raise ImportError("minitx.kernels needs Triton, which `pip install minitx` does not install: "
                      "`pip install triton` (it is also in the dev extra, `pip install 'minitx[dev]'`); "
                      "the 'math' and 'sdpa' attention backends need neither")
