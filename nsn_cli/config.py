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
