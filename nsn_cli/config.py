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
#: Default ``--reference-images``: EM on more images runs as on this many (a patch below alpha
#: may start a filter with chance REFERENCE_IMAGES / images; filters under one reference
#: patch's share are merged), so filter counts follow the data's distribution, not its size.
#: The default alphas were fitted on 4,000 digits (SPEC.md, "Changes made in nsn").
REFERENCE_IMAGES = 4000
#: Default number of EM iterations per layer.
ITERATIONS = 10
#: The sigma floor is ``sigma_new / SIGMA_FLOOR_DIVISOR`` (SPEC.md).
SIGMA_FLOOR_DIVISOR = 32.0
#: NSN-Gen defaults for ``nsn sample`` (bench/bench_quality.py sweep, README): delta3 = 1.1
#: lowered FID 10.3 -> 7.2 and raised recall 0.49 -> 0.64 on held-out digits with the mix
#: prior. style and inpaint keep the paper's delta3 = 1 (they must reproduce known content).
SAMPLE_DELTA1 = 100.0
SAMPLE_DELTA3 = 1.1
#: ``--memory`` is the whole ``train`` process's budget; this much of it is set aside for the
#: interpreter, numba's compiled kernels and thread pools, h5py and small working blocks
#: (measured on a tiny data set, 2 cores: 188 MB resident with numba's cache warm, 241 MB on
#: a first run that compiles every kernel), the rest is for data.
PROCESS_RESERVE = 256 << 20
#: The smallest ``--memory``: the reserve plus room for the top-layer statistics.
MIN_MEMORY = 352 << 20
