"""Triton kernels. Imported lazily through the attention backend registry; never needed on a CPU-only install."""

# A runtime-only install (`pip install minitx`) has no Triton: say which package brings it, not just its name.
try:
    import triton  # noqa: F401
except ImportError as err:
    raise ImportError("minitx.kernels needs Triton, which `pip install minitx` does not install: "
                      "`pip install triton` (it is also in the dev extra, `pip install 'minitx[dev]'`); "
                      "the 'math' and 'sdpa' attention backends need neither") from err
