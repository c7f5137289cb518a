"""Sample quality per prior on held-out digits (issue: top-layer density).

Train NSN on 3,500 bundled digits, keep 500 out; score each prior's samples and two peers
measured in the same run (a Gaussian mixture on PCA-50 pixels; the training set itself) with
a digit classifier's IS, FID in its hidden features, precision/recall (k = 3) and
memorisation. Writes bench/results/quality.json and prints a table.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from common import OUT, bundled_digits, write_dataset  # noqa: E402

from nsn_cli.metrics import DigitClassifier, frechet_distance, inception_score, memorisation, precision_recall
from nsn_cli.model import DecodeParams, NSNModel
from nsn_cli.sample import generate


def main(n_samples: int = 500) -> dict:
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture


    images, labels = bundled_digits()
    train_x, held = images[:3500], images[3500:]
    data = write_dataset(train_x, "mnist3500.h5")
    model_path = OUT / "quality-model.h5"
    from nsn_cli.train import TrainOptions, train

    started = time.perf_counter()
    train(data, model_path, TrainOptions(seed=0), force=True)
    train_seconds = time.perf_counter() - started
    model = NSNModel.load(model_path)
    clf = DigitClassifier.fit(train_x, labels[:3500])
    real_features = clf.features(held)

    def score(name, samples):
        probs = clf.probabilities(samples)
        is_mean, is_std = inception_score(probs)
        feats = clf.features(samples)
        precision, recall = precision_recall(real_features, feats)
        median_ratio, copies, real_copies = memorisation(samples, train_x, held)
        return {"name": name, "IS": is_mean, "IS_std": is_std, "FID": frechet_distance(real_features, feats),
                "precision": precision, "recall": recall, "nn_ratio": median_ratio,
                "near_copies": copies, "near_copies_real": real_copies}

    rows = [score("held-out real (floor)", held), score("training set", train_x[:n_samples])]
    pca = PCA(50, random_state=0).fit(train_x.reshape(3500, -1))
    gmm = GaussianMixture(10, covariance_type="full", random_state=0).fit(pca.transform(train_x.reshape(3500, -1)))
    gmm_samples = np.clip(pca.inverse_transform(gmm.sample(n_samples)[0]), 0, 1).reshape(-1, 28, 28, 1)
    rows.append(score("PCA-50 GMM (peer)", gmm_samples.astype(np.float32)))
    rows.append(score("nsn, paper's sampler", generate(model, n_samples, prior="normal", params=DecodeParams(), seed=1)))
    for prior in ("normal", "counts", "pca", "mix", "knn"):
        for seed in (1, 2):  # two sample draws: the spread between them is the noise of a row
            samples = generate(model, n_samples, prior=prior, params=DecodeParams.for_sampling(), seed=seed)
            rows.append(score(f"nsn --prior {prior} (seed {seed})", samples))
    # the NSN-Gen sweep behind the defaults (issue: NSN-Gen), with the default prior
    sweep = []
    settings = [dict(delta1=d1) for d1 in (5, 20, 50, 100, 200)]
    settings += [dict(delta3=d3) for d3 in (1.0, 1.05, 1.15, 1.5)]
    settings += [dict(delta2=0.02), dict(delta2=0.5, noise_layers="pixel"),
                 dict(delta2=1.0, noise_layers="pixel", noise_scale="dim"), dict(draws=3)]
    for prior in ("counts", "mix", "knn"):
        for setting in settings:
            samples = generate(model, n_samples, prior=prior, params=DecodeParams.for_sampling(**setting), seed=1)
            label = f"{prior} " + " ".join(f"{k}={v}" for k, v in setting.items())
            sweep.append(score(label, samples))
    result = {"classifier_accuracy": clf.accuracy, "train_seconds": train_seconds, "samples": n_samples,
              "filters": [layer.filters for layer in model.layers], "rows": rows, "sweep": sweep}
    (OUT / "quality.json").write_text(json.dumps(result, indent=2))
    print(f"classifier held-out accuracy {clf.accuracy:.3f}; NSN filters {result['filters']}; train {train_seconds:.1f} s")
    print(f"{'':26s} {'IS':>6s} {'FID':>8s} {'prec':>6s} {'recall':>6s} {'nn-ratio':>8s} {'copies':>6s}")
    for r in rows + [{"name": "--- sweep (NSN-Gen settings) ---", **{k: float("nan") for k in rows[0] if k != "name"}}] + sweep:
        print(f"{r['name']:26s} {r['IS']:6.2f} {r['FID']:8.2f} {r['precision']:6.3f} {r['recall']:6.3f} "
              f"{r['nn_ratio']:8.3f} {r['near_copies']:6.3f}")
    return result


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 500)
