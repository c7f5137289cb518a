"""Sample-quality metrics without an ImageNet network (classifier IS/FID, precision/recall,
memorisation). scikit-learn and scipy are imported lazily: they come with the ``test`` and
``bench`` extras."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class DigitClassifier:
    """A small MLP on pixels; its hidden layer gives the features for FID and precision/recall."""

    model: object
    accuracy: float

    @classmethod
    def fit(cls, images: np.ndarray, labels: np.ndarray, seed: int = 0) -> DigitClassifier:
        from sklearn.neural_network import MLPClassifier

        x = images.reshape(len(images), -1)
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(x))
        cut = int(0.9 * len(x))
        clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=200, random_state=seed, early_stopping=False)
        clf.fit(x[order[:cut]], labels[order[:cut]])
        accuracy = float(clf.score(x[order[cut:]], labels[order[cut:]]))
        clf.fit(x, labels)
        return cls(clf, accuracy)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(images.reshape(len(images), -1))

    def features(self, images: np.ndarray) -> np.ndarray:
        x = images.reshape(len(images), -1)
        return np.maximum(x @ self.model.coefs_[0] + self.model.intercepts_[0], 0.0)


def inception_score(probabilities: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """exp(E KL(p(y|x) || p(y))), mean and std over ``splits``."""
    scores = []
    for part in np.array_split(probabilities, splits):
        marginal = part.mean(axis=0, keepdims=True)
        kl = np.sum(part * (np.log(part + 1e-12) - np.log(marginal + 1e-12)), axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two feature sets (n, d)."""
    from scipy import linalg

    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    root = root.real
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * root))


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Kynkaanniemi et al. 2019: manifolds as unions of k-NN balls."""
    from sklearn.metrics import pairwise_distances

    def radii(x):
        d = pairwise_distances(x, x)
        return np.sort(d, axis=1)[:, k]

    r_real, r_fake = radii(real), radii(fake)
    d = pairwise_distances(fake, real)
    precision = float(np.mean((d <= r_real[None, :]).any(axis=1)))
    recall = float(np.mean((d.T <= r_fake[None, :]).any(axis=1)))
    return precision, recall


def nearest_distance(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=1).fit(train.reshape(len(train), -1))
    return nn.kneighbors(x.reshape(len(x), -1))[0][:, 0]


def memorisation(samples: np.ndarray, train: np.ndarray, held_out: np.ndarray) -> tuple[float, float, float]:
    """(median ratio, near-copy fraction of samples, near-copy fraction of held-out reals).

    Ratio: a sample's pixel distance to its nearest training image over the median of the
    held-out images' nearest-training distances. A near copy has ratio < 0.5."""
    typical = float(np.median(nearest_distance(held_out, train)))
    ratio = nearest_distance(samples, train) / typical
    real_ratio = nearest_distance(held_out, train) / typical
    return float(np.median(ratio)), float(np.mean(ratio < 0.5)), float(np.mean(real_ratio < 0.5))
