"""The one numba engine every subcommand calls.

- :mod:`.geometry`   layer shapes, architectures, map sizes
- :mod:`.patches`    patch extraction and overlap-averaged stitching
- :mod:`.similarity` Eq. 1, activations, best-filter search
- :mod:`.em`         the non-parametric hard EM of one layer (creation pass, M-step)
- :mod:`.generate`   NSN-Gen's top-down step and its counter-based random numbers

Each module keeps its numba kernels small and private (``_name``) and exposes validating,
documented Python functions; commands never call a kernel directly.
"""
