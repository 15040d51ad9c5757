"""Triton kernels. Imported lazily through the attention backend registry; never needed on a CPU-only install."""
