"""A variational autoencoder peer for ``make bench-quality`` (Kingma and Welling 2014), in
numpy so the benchmark needs no deep-learning framework: the MLP VAE of the paper's MNIST
experiments (784-400-20 encoder, 20-400-784 Bernoulli decoder), Adam, seeded.

It is here to be measured against, not used by nsn: ``fit_vae(images)`` then
``vae.sample(n, seed)`` gives the decoder's mean images (the usual way VAE samples are shown
and scored).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

HIDDEN = 400
LATENT = 20


def _he(rng, fan_in, fan_out):
    return (rng.standard_normal((fan_in, fan_out)) * math.sqrt(2.0 / fan_in)).astype(np.float32)


@dataclass
class Vae:
    weights: dict[str, np.ndarray]
    shape: tuple[int, int, int]

    def decode(self, z: np.ndarray) -> np.ndarray:
        w = self.weights
        h = np.maximum(z @ w["d1"] + w["d1_b"], 0.0)
        logits = h @ w["d2"] + w["d2_b"]
        return (1.0 / (1.0 + np.exp(-logits))).reshape(len(z), *self.shape).astype(np.float32)

    def sample(self, n: int, seed: int) -> np.ndarray:
        z = np.random.default_rng(seed).standard_normal((n, LATENT)).astype(np.float32)
        return self.decode(z)


def fit_vae(images: np.ndarray, *, epochs: int = 60, batch: int = 100, rate: float = 1e-3, seed: int = 0,
            verbose: bool = True) -> Vae:
    """Maximise the ELBO of images (N, H, W, C) in [0, 1] with a Bernoulli likelihood."""
    x_all = images.reshape(len(images), -1).astype(np.float32)
    d = x_all.shape[1]
    rng = np.random.default_rng(seed)
    w = {"e1": _he(rng, d, HIDDEN), "e1_b": np.zeros(HIDDEN, np.float32),
         "mu": _he(rng, HIDDEN, LATENT) * 0.1, "mu_b": np.zeros(LATENT, np.float32),
         "lv": _he(rng, HIDDEN, LATENT) * 0.1, "lv_b": np.zeros(LATENT, np.float32),
         "d1": _he(rng, LATENT, HIDDEN), "d1_b": np.zeros(HIDDEN, np.float32),
         "d2": _he(rng, HIDDEN, d) * 0.1, "d2_b": np.zeros(d, np.float32)}
    m = {k: np.zeros_like(v) for k, v in w.items()}
    v2 = {k: np.zeros_like(v) for k, v in w.items()}
    step = 0
    for epoch in range(epochs):
        order = rng.permutation(len(x_all))
        total = 0.0
        for a in range(0, len(order), batch):
            x = x_all[order[a : a + batch]]
            n = len(x)
            h = np.maximum(x @ w["e1"] + w["e1_b"], 0.0)
            mu = h @ w["mu"] + w["mu_b"]
            logvar = np.clip(h @ w["lv"] + w["lv_b"], -10, 10)
            std = np.exp(0.5 * logvar)
            eps = rng.standard_normal(mu.shape).astype(np.float32)
            z = mu + std * eps
            g = np.maximum(z @ w["d1"] + w["d1_b"], 0.0)
            logits = g @ w["d2"] + w["d2_b"]
            p = 1.0 / (1.0 + np.exp(-logits))
            recon = -np.sum(x * np.log(p + 1e-7) + (1 - x) * np.log(1 - p + 1e-7)) / n
            kl = -0.5 * np.sum(1 + logvar - mu**2 - np.exp(logvar)) / n
            total += (recon + kl) * n
            d_logits = (p - x) / n
            grads = {"d2": g.T @ d_logits, "d2_b": d_logits.sum(0)}
            d_g = (d_logits @ w["d2"].T) * (g > 0)
            grads["d1"], grads["d1_b"] = z.T @ d_g, d_g.sum(0)
            d_z = d_g @ w["d1"].T
            d_mu = d_z + mu / n
            d_logvar = d_z * eps * 0.5 * std + 0.5 * (np.exp(logvar) - 1) / n
            grads["mu"], grads["mu_b"] = h.T @ d_mu, d_mu.sum(0)
            grads["lv"], grads["lv_b"] = h.T @ d_logvar, d_logvar.sum(0)
            d_h = (d_mu @ w["mu"].T + d_logvar @ w["lv"].T) * (h > 0)
            grads["e1"], grads["e1_b"] = x.T @ d_h, d_h.sum(0)
            step += 1
            scale = rate * math.sqrt(1 - 0.999**step) / (1 - 0.9**step)
            for k, gk in grads.items():
                m[k] = 0.9 * m[k] + 0.1 * gk
                v2[k] = 0.999 * v2[k] + 0.001 * gk * gk
                w[k] -= (scale * m[k] / (np.sqrt(v2[k]) + 1e-8)).astype(np.float32)
        if verbose and (epoch + 1) % 10 == 0:
            print(f"  VAE epoch {epoch + 1}/{epochs}: -ELBO {total / len(x_all):.1f} nats", flush=True)
    return Vae(w, tuple(images.shape[1:]))
