"""Sample quality on held-out digits, judged by the CNN of ``nsn score`` (``make bench-quality``).

NSN trains on the first 3,000 bundled digits with default settings; the other 1,000 are held
out. The judge (nsn_cli/judge.py) trains on the 3,000 training digits' labels; FID, KID and
precision/recall compare each sample set with the 1,000 held-out digits in its features, IS
uses its class probabilities, and near-copies are samples whose pixel distance to the nearest
training digit is under half the held-out digits' median (held-out digits themselves: ~7%).

Every row is two independent sample sets (seeds 1 and 2) of 2,000 images: their spread is
the noise of a row. Peers measured in the same run: the training digits themselves (a perfect
memoriser), a Gaussian mixture on PCA-50 pixels and an MLP VAE (bench/vae_peer.py), both fitted
to the same 3,000 digits. Writes bench/results/quality.json and a picture per key row
(bench/results/quality-*.png).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from common import OUT, bundled_digits, write_dataset  # noqa: E402

from nsn_cli.judge import fit_judge
from nsn_cli.metrics import frechet_distance, inception_score, kernel_inception_distance, memorisation, precision_recall
from nsn_cli.model import DecodeParams, NSNModel
from nsn_cli.sample import generate, image_grid

TRAIN = 3000
SAMPLES = 2000
SEEDS = (1, 2)
PICTURES = ("held-out digits", "VAE (MLP, 60 epochs)", "nsn, the paper's sampler", "nsn before this change",
            "nsn defaults (calibrated)")


def save_grid(images: np.ndarray, name: str) -> None:
    import imageio.v3 as iio

    slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    iio.imwrite(OUT / f"quality-{slug}.png", image_grid(images[:64], 8))


def main(samples: int = SAMPLES) -> dict:
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture
    from vae_peer import fit_vae

    started = time.perf_counter()
    images, labels = bundled_digits()
    train_x, held = images[:TRAIN], images[TRAIN:]
    judge = fit_judge(train_x, labels[:TRAIN])
    reference = judge.features(held)
    print(f"judge: held-out accuracy {judge.accuracy:.3f}", flush=True)

    from nsn_cli.train import TrainOptions, train

    model_path = OUT / "quality-model.h5"
    train(write_dataset(train_x, f"mnist{TRAIN}.h5"), model_path, TrainOptions(seed=0), force=True)
    model = NSNModel.load(model_path)
    print(f"nsn: filters {[layer.filters for layer in model.layers]}", flush=True)

    def score(name: str, sets: list[np.ndarray]) -> dict:
        runs = []
        for images_ in sets:
            features, probabilities = judge.both(images_)
            precision, recall = precision_recall(reference, features[:2500], k=3)
            kid, _ = kernel_inception_distance(reference, features)
            ratio, copies, real_copies = memorisation(images_[:1000], train_x, held)
            runs.append({"IS": inception_score(probabilities)[0], "FID": frechet_distance(reference, features),
                         "KID": kid, "precision": precision, "recall": recall, "near_copies": copies,
                         "nn_ratio": ratio, "near_copies_held_out": real_copies})
        row = {"name": name, "samples": len(sets[0]), "runs": runs}
        cells = "  ".join(f"{k} {' / '.join(f'{r[k]:.3g}' for r in runs)}"
                          for k in ("IS", "FID", "KID", "precision", "recall", "near_copies"))
        print(f"{name:44s} {cells}", flush=True)
        if name in PICTURES:
            save_grid(sets[0], name)
        return row

    def nsn(**kw) -> list[np.ndarray]:
        return [generate(model, samples, seed=seed, **kw) for seed in SEEDS]

    rows = [score("held-out digits", [held])]
    rows.append(score("training digits (a perfect memoriser)", [train_x[:samples]]))
    flat = train_x.reshape(TRAIN, -1)
    pca = PCA(50, random_state=0).fit(flat)
    gmm = GaussianMixture(10, covariance_type="full", random_state=0).fit(pca.transform(flat))

    def gmm_samples(seed: int) -> np.ndarray:
        gmm.random_state = seed  # sample() draws from the estimator's own random_state
        return np.clip(pca.inverse_transform(gmm.sample(samples)[0]), 0, 1).reshape(-1, 28, 28, 1).astype(np.float32)

    rows.append(score("PCA-50 Gaussian mixture", [gmm_samples(seed) for seed in SEEDS]))
    vae = fit_vae(train_x, epochs=60)
    rows.append(score("VAE (MLP, 60 epochs)", [vae.sample(samples, seed) for seed in SEEDS]))
    rows.append(score("nsn, the paper's sampler", nsn(prior="normal", params=DecodeParams(), calibrate=False)))
    rows.append(score("nsn before this change", nsn(prior="mix", params=DecodeParams(delta3=1.1), calibrate=False)))
    rows.append(score("nsn, old defaults + calibration", nsn(prior="mix", params=DecodeParams(delta3=1.1, draws=1))))
    rows.append(score("nsn defaults, no calibration", nsn(calibrate=False)))
    rows.append(score("nsn defaults (calibrated)", nsn()))
    for prior in ("normal", "counts", "pca", "knn"):
        rows.append(score(f"nsn --prior {prior}", nsn(prior=prior)))
    sweep = []
    for setting in ([{"delta1": d} for d in (50, 100, 400)] + [{"draws": d} for d in (1, 3)] + [{"pixel_draws": 1}]
                    + [{"delta3": 1.5}]):
        label = "nsn " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in setting.items())
        sweep.append(score(label, nsn(params=DecodeParams.for_sampling(**setting))))
    result = {"judge_accuracy": judge.accuracy, "train_images": TRAIN, "held_out": len(held), "samples": samples,
              "filters": [layer.filters for layer in model.layers], "rows": rows, "sweep": sweep,
              "seconds": time.perf_counter() - started}
    (OUT / "quality.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {OUT / 'quality.json'} ({result['seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else SAMPLES)
