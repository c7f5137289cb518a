"""nsn: the Normal Similarity Network toolkit (train, sample, style, inpaint, score)."""

__version__ = "0.1.0"
