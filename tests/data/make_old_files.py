"""Write a tiny data set and model in the current file formats, named by their format versions
(``dataset-v<N>.h5``, ``model-v<N>.h5``), into this folder.

tests/test_formats.py checks that every file here still loads and samples, so each format
version nsn ever wrote stays readable. When a format version is bumped, run this script
(``python tests/data/make_old_files.py``) and commit the new files beside the old ones;
never regenerate a file of an older version with newer code.

The files are tiny on purpose: the first 100 bundled digits at 10 x 10 pixels, ZCA-whitened
(so the whitening is read back too), with labels, and a two-layer model trained briefly
on them (top statistics and pixel calibration included).
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import warnings
from pathlib import Path

import h5py

HERE = Path(__file__).resolve().parent
DIGITS = HERE.parents[1] / "data" / "mnist-4k-images-idx3-ubyte.gz"
LABELS = HERE.parents[1] / "data" / "mnist-4k-labels-idx1-ubyte.gz"
IMAGES = 100
SIZE = (10, 10)
ARCH = "4x4/2,4x4/1"


def _version(path: Path) -> str:
    with h5py.File(path, "r") as handle:
        value = handle.attrs["encoding-version"]
    return value.decode() if isinstance(value, bytes) else str(value)


def main() -> None:
    from nsn_cli.prep import prep
    from nsn_cli.train import TrainOptions, train

    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory(dir=HERE) as work, contextlib.chdir(work):
        # relative names: the model records its data set's path, which must not be this machine's
        data, model = Path("dataset.h5"), Path("model.h5")
        prep([DIGITS], data, size=SIZE, zca=True, labels_path=LABELS, limit=IMAGES)
        train(data, model, TrainOptions(arch=ARCH, iterations=3, seed=1))
        for path, kind in ((data, "dataset"), (model, "model")):
            target = HERE / f"{kind}-v{_version(path)}.h5"
            if target.exists() and "--force" not in sys.argv:
                print(f"{target.name} exists; kept (--force rewrites it: only ever for the current version)")
                continue
            path.replace(target)
            print(f"wrote {target.name} ({target.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
