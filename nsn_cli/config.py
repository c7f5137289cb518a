"""Numba options and numeric defaults, in one place.

Kernels import ``JIT`` / ``JIT_PARALLEL`` from here; a test fails on any hard-coded
``fastmath=`` elsewhere. fastmath is enabled without ``nnan``/``ninf`` because the engine uses
``-inf`` as a sentinel (an empty best similarity, creation switched off).
"""

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

JIT = {"cache": True, "fastmath": FASTMATH, "nogil": True}
JIT_PARALLEL = {**JIT, "parallel": True}

#: Default ZCA regulariser on [0, 1] pixels (SPEC.md).
ZCA_EPS = 1e-2
#: Images read and written per chunk by ``prep`` (bounded memory on large folders).
PREP_CHUNK = 2048
#: Default cap on the number of filters of one layer.
MAX_FILTERS = 2000
#: Default number of EM iterations per layer.
ITERATIONS = 10
#: The sigma floor is ``sigma_new / SIGMA_FLOOR_DIVISOR`` (SPEC.md).
SIGMA_FLOOR_DIVISOR = 32.0
#: NSN-Gen defaults for ``nsn sample``, chosen with the CNN judge on held-out digits
#: (bench/bench_quality.py, README): the expected weights (draws 0) after the mix prior took
#: FID 42 -> 34 and IS 8.1 -> 8.55 (calibrated samples, two seeds); delta3 no longer matters
#: once the pixel calibration maps the output's histogram, so it is the paper's 1.
SAMPLE_DELTA1 = 100.0
SAMPLE_DELTA3 = 1.0
#: After a top-density prior: the expected weights (the limit of many draws), see DecodeParams.
SAMPLE_DRAWS = 0
#: ``--memory`` is the whole ``train`` process's budget; this much of it is set aside for the
#: interpreter, numba's compiled kernels and thread pools, h5py and small working blocks
#: (measured on a tiny data set, 2 cores: 188 MB resident with numba's cache warm, 241 MB on
#: a first run that compiles every kernel), the rest is for data.
PROCESS_RESERVE = 256 << 20
#: The smallest ``--memory``: the reserve plus room for the top-layer statistics.
MIN_MEMORY = 352 << 20
