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
#: With default alphas a top layer keeps at most one filter per TOP_MIN_IMAGES training images
#: (the top density samples by mixing a filter's member images, and a filter of one image can
#: only copy it), and a lower layer one per MIN_FILTER_PATCHES patches (a filter mean of a few
#: patches is a training patch, which decoding pastes back). 80 bundled faces made 80 top filters
#: and 66% near-copies before; 60 faces: layer-2 filters 254 / 129 / 65 / 31 gave 23 / 9 / 5 /
#: 2% near-copies. Neither cap touches the digits (4,000 images: at most 500 and 2,250).
TOP_MIN_IMAGES = 8
MIN_FILTER_PATCHES = 64
#: Default ``--reference-images``: EM on more images runs as on this many (a patch below alpha
#: may start a filter with chance REFERENCE_IMAGES / images; filters under one reference
#: patch's share are merged), so filter counts follow the data's distribution, not its size.
#: The default alphas were fitted on 4,000 digits (SPEC.md, "Changes made in nsn").
REFERENCE_IMAGES = 4000
#: Default number of EM iterations per layer.
ITERATIONS = 10
#: The sigma floor is ``sigma_new / SIGMA_FLOOR_DIVISOR`` (SPEC.md).
SIGMA_FLOOR_DIVISOR = 32.0
#: NSN-Gen's defaults (paper section 4.2, SPEC.md "Defaults that gave the best digits"): what
#: DecodeParams, ``nsn style`` and ``nsn inpaint --method layers`` use.
DELTA1 = 100.0
DELTA2 = 0.0
DELTA3 = 1.0
DRAWS = 1
NOISE_LAYERS = "all"
NOISE_SCALE = "rms"
#: ``nsn style``: encode to this layer, decode this many variants.
STYLE_LAYER = 1
STYLE_VARIANTS = 4
#: ``nsn inpaint`` (SPEC "Inpaint"): ``posterior`` averages the CANDIDATES nearest decoded
#: members plus the half-way mixes of every pair of the PAIRS nearest, weighted with
#: temperature TEMPERATURE, the known residual fading over BOUNDARY pixels; ``layers``
#: averages DRAWS decodings, re-encoding ROUNDS times.
#: The posterior fill decodes its candidates (training members) with this softmax sharpness:
#: a reconstruction of known content, where a softer blend of filter means is the better
#: estimate. Hole PSNR on held-out digits 3,000-3,499 (3,000-digit model), centre / bottom
#: half: delta1 30 -> 10.2 / 13.2 dB, 45 -> 11.3 / 13.9, 60 -> 11.4 / 14.0, 100 -> 11.2 /
#: 13.9, 200 (sampling's) -> 11.0 / 13.8.
INPAINT_DELTA1 = 60.0
INPAINT_CANDIDATES = 20
INPAINT_PAIRS = 10
INPAINT_TEMPERATURE = 0.1
INPAINT_BOUNDARY = 1.0
INPAINT_FOCUS = 3.0
INPAINT_MIX_PENALTY = 0.02
INPAINT_DRAWS = 8
INPAINT_ROUNDS = 1
#: NSN-Gen defaults for ``nsn sample``, chosen with the CNN judge on held-out digits
#: (bench/bench_quality.py; two models, on 3,000 and 3,500 training digits, two sample seeds
#: each, calibration fitted per setting; README). After a top-density prior SAMPLE_DRAWS gives
#: the draws (hidden layers, pixel layer): the expected weights everywhere took calibrated FID
#: 55 -> 47 and 44 -> 37, IS 7.9 -> 8.35 and 8.1 -> 8.55 against one draw everywhere, and
#: remove the speckled strokes one sees; expected weights above the pixels with one draw at them
#: sit in between (FID 51 / 40, IS 8.1 / 8.4). The near-copy fraction rises from 1.5-2.5% to
#: 4-5%: the flagged samples are clean "1"s, which sit as close to training 1s as held-out
#: real 1s do (7.6% of held-out digits are flagged the same way). delta3 no longer matters once
#: the pixel calibration maps the output's histogram, so it is the paper's 1 (1.1 raised FID
#: 52 -> 58 with the expected weights). delta1 (the softmax's sharpness) 100 -> 200 with the
#: expected weights, 3,000-digit model, two seeds: FID 52.5 -> 46.5, recall 0.80 -> 0.82,
#: near-copies 5.3% -> 3.6%, IS 8.33 -> 8.34; 400 and 1,000 sit on the same plateau (FID 46,
#: IS 8.25-8.3, copies 2.4-2.9%); 150 in between (FID 47.5, copies 4%).
SAMPLE_DELTA1 = 200.0
SAMPLE_DELTA3 = DELTA3
SAMPLE_DRAWS = (0, 0)
#: Images NSN-Gen draws for a model's pixel calibration (train's and ``nsn calibrate``'s).
CALIBRATION_SAMPLES = 4096
#: ``nsn score -n``: samples drawn from each model, at most this many images of other inputs.
SCORE_SAMPLES = 10000
#: ``--memory`` is the whole ``train`` process's budget; this much of it is set aside for the
#: interpreter, numba's compiled kernels and thread pools, h5py and small working blocks
#: (measured on a tiny data set, 2 cores: 188 MB resident with numba's cache warm, 241 MB on
#: a first run that compiles every kernel), the rest is for data.
PROCESS_RESERVE = 256 << 20
#: The smallest ``--memory``: the reserve plus room for the top-layer statistics.
MIN_MEMORY = 352 << 20
