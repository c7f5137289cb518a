"""nsn: the Normal Similarity Network toolkit (train, sample, style, inpaint, score).

From Python: ``from nsn_cli import NSN, load, score`` (see :mod:`nsn_cli.api`); they are
imported on first use, so ``import nsn_cli`` stays cheap.
"""

__version__ = "0.1.0"

__all__ = ["NSN", "__version__", "load", "score"]

#: The library's names, resolved from :mod:`nsn_cli.api` when first asked for.
_API = ("NSN", "load", "score")


def __getattr__(name: str):
    if name in _API:
        from nsn_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'nsn_cli' has no attribute {name!r}")
