"""nsn: the Normal Similarity Network toolkit (train, sample, style, inpaint, score).

From Python: ``from nsn_cli import NSN, load, score`` (see :mod:`nsn_cli.api`); they are
imported on first use, so ``import nsn_cli`` stays cheap.
"""

__version__ = "0.1.0"

from nsn_cli.kernel_cache import forget_stale_kernels  # noqa: E402

# before any kernel is loaded: numba's cache does not see a change in a module a kernel inlines
forget_stale_kernels()

__all__ = ["NSN", "__version__", "load", "score"]

#: The library's names, resolved from :mod:`nsn_cli.api` when first asked for.
_API = ("NSN", "load", "score")


def __getattr__(name: str):
    if name in _API:
        from nsn_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'nsn_cli' has no attribute {name!r}")
