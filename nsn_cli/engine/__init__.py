"""The one numba engine every subcommand calls.

- :mod:`.geometry`   layer shapes, architectures, map sizes
- :mod:`.patches`    patch extraction and overlap-averaged stitching
- :mod:`.similarity` Eq. 1, activations, best-filter search
- :mod:`.em`         the non-parametric hard EM of one layer (creation pass, M-step)
- :mod:`.decode`     NSN-Gen's top-down step and its counter-based random numbers
- :mod:`.stream`     the same EM on patches that come in chunks (a memory budget, Dask)
- :mod:`.encode`     encoding up to a layer, whole or chunk by chunk from a data file, and the
                     chunk source of a streamed layer (the one engine module that reads files)

Each module keeps its numba kernels small and private (``_name``) and exposes validating,
documented Python functions; commands never call a kernel directly.
"""
