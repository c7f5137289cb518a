"""``make judge``: does the judge of ``nsn score`` see what a person sees?

Heusel et al. (2017) validated FID by disturbing real images and checking that it grows with
the disturbance. Here, for each family of :mod:`nsn_cli.disturb` at three levels:

- digits: the judge trained on 3,000 bundled digits (their labels), the other 1,000 held out
  and disturbed; FID and KID against the 3,000;
- faces: the random (label-free) judge, 40 of the 80 bundled faces as reference, the other 40
  disturbed.

A few generated sets are scored beside them (an NSN trained on the same 3,000 digits, sampled
as the paper does and with the defaults), so the table shows where our own samples sit among
the disturbances. Prints the table, says whether every family is monotone, writes
bench/results/judge.json.
"""

from __future__ import annotations

import json
import time

import numpy as np
from common import OUT, bundled_digits, write_dataset  # noqa: E402

from nsn_cli.disturb import LEVELS, disturbed_sets
from nsn_cli.judge import fit_judge, random_judge
from nsn_cli.metrics import frechet_distance, kernel_inception_distance
from nsn_cli.model import DecodeParams, NSNModel
from nsn_cli.readers import open_source
from nsn_cli.sample import generate

ROOT = OUT.parent.parent


def table_for(judge, reference: np.ndarray, held: np.ndarray, labels, extra: dict[str, np.ndarray]) -> dict:
    """``{family: {level: {"fid", "kid", "kid_std"}}}`` with level 0 the undisturbed set, and
    ``{"generated": {name: ...}}`` for the extra sets."""
    ref_features = judge.features(reference)

    def measure(images: np.ndarray) -> dict:
        features = judge.features(images)
        kid, kid_std = kernel_inception_distance(ref_features, features)
        return {"fid": frechet_distance(ref_features, features), "kid": kid, "kid_std": kid_std}

    clean = measure(held)
    table: dict = {}
    for (family, level), images in disturbed_sets(held, labels, seed=1).items():
        table.setdefault(family, {0: clean})[level] = measure(images)
        print(f"  {family} {level}: FID {table[family][level]['fid']:.2f}", flush=True)
    table["generated"] = {name: measure(images) for name, images in extra.items()}
    return table


def flat_fids(table: dict) -> list[float]:
    return [row["fid"] for family, levels in sorted(table.items()) for _, row in sorted(levels.items())]


def agreement(a: dict, b: dict) -> float:
    """Kendall's tau between two judges' FIDs over every set of the table."""
    from scipy.stats import kendalltau

    return float(kendalltau(flat_fids(a), flat_fids(b)).statistic)


def monotone(table: dict, first: int) -> dict[str, bool]:
    return {family: all(np.diff([levels[k][m] for k in range(first, 4)]).min() > 0 for m in ("fid", "kid"))
            for family, levels in table.items() if family != "generated"}


def print_table(title: str, table: dict, first: int) -> None:
    print(f"\n{title}")
    print(f"{'family':12s} " + " ".join(f"{'level ' + str(k):>20s}" for k in range(4)) + "   monotone")
    ok = monotone(table, first)
    for family, levels in table.items():
        if family == "generated":
            continue
        cells = " ".join(f"{levels[k]['fid']:9.2f} / {levels[k]['kid']:8.2f}" for k in range(4))
        print(f"{family:12s} {cells}   {'yes' if ok[family] else 'NO'}")
    for name, row in table["generated"].items():
        print(f"{name:34s} FID {row['fid']:9.2f}   KID {row['kid']:9.2f} ± {row['kid_std']:.2f}")


def main() -> dict:
    started = time.perf_counter()
    images, labels = bundled_digits()
    reference, held = images[:3000], images[3000:]
    judge = fit_judge(reference, labels[:3000])
    print(f"digit judge: held-out accuracy {judge.accuracy:.3f} ({time.perf_counter() - started:.1f} s to train)")
    from nsn_cli.train import TrainOptions, train

    model_path = OUT / "judge-model.h5"
    train(write_dataset(reference, "mnist3000.h5"), model_path, TrainOptions(seed=0), force=True)
    model = NSNModel.load(model_path)
    generated = {
        "nsn, paper's sampler (normal, delta3 1)": generate(model, 1000, prior="normal", params=DecodeParams(), seed=1),
        "nsn, sample defaults": generate(model, 1000, seed=1),
        "training digits (copies)": reference[:1000],
    }
    digits = table_for(judge, reference, held, labels[3000:], generated)
    # the label-free judge on the same sets: how well does it rank them like the trained one?
    digits_random = table_for(random_judge(reference.shape[1:]), reference, held, labels[3000:], generated)
    tau = agreement(digits, digits_random)
    source = open_source(ROOT / "data" / "lfw25-faces")
    faces = np.stack(source.read(0, len(source))).astype(np.float32) / 255.0
    face_table = table_for(random_judge(faces.shape[1:]), faces[:40], faces[40:], None, {})
    print_table("digits (trained judge, 3,000 reference / 1,000 held out; FID / KID per level)", digits, first=0)
    print_table("digits, random judge (no labels), same sets", digits_random, first=0)
    print(f"Kendall tau between the trained and the random judge's FID over all {len(flat_fids(digits))} digit sets: "
          f"{tau:.3f}")
    print_table("faces (random judge, 40 reference / 40 held out; FID / KID per level)", face_table, first=1)
    result = {"levels": {k: list(v) for k, v in LEVELS.items()}, "judge_accuracy": judge.accuracy,
              "digits": digits, "digits_random_judge": digits_random, "tau_trained_random": tau, "faces": face_table, "digits_monotone": monotone(digits, 0),
              "faces_monotone": monotone(face_table, 1), "seconds": time.perf_counter() - started}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "judge.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"\nwrote {OUT / 'judge.json'} ({result['seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
