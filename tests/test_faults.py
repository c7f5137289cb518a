"""Faults a user will hit, injected into real ``nsn`` processes: Ctrl-C (SIGINT), kill -9, a
read-only folder, a full disk (RLIMIT_FSIZE, what ``ulimit -f`` sets) and a second writer.

Each case asserts what the README promises: the exit status (130 after Ctrl-C, 2 for the
rest), exactly one line on stderr, no traceback,
no temporary or lock file left, and no existing file changed. One case of each kind runs in
the fast suite; the rest of each matrix is marked slow.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from nsn_cli.files import remove_stale_temporaries

from .conftest import MNIST_IMAGES

INTERRUPTED = 130  # the exit status after Ctrl-C
LEFTOVER = re.compile(r"^\..*\.(tmp|lock)$")  # our temporaries and lock files are hidden


# --------------------------------------------------------------------------- helpers


def _child_setup(file_limit: int | None):
    """Run in the child before exec: Ctrl-C as at a terminal (a parent that ignores SIGINT,
    e.g. a background job, would pass that on) and an optional file size limit in bytes."""

    def setup() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if file_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    return setup


def start(*argv, cwd: Path, file_limit: int | None = None, env: dict | None = None) -> subprocess.Popen:
    """``nsn ARGV`` as a new process (its output captured as text)."""
    return subprocess.Popen(
        [sys.executable, "-m", "nsn_cli", *map(str, argv)], cwd=cwd, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_child_setup(file_limit),
    )


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def run_all(cases: list[list], cwd: Path, file_limit: int | None = None) -> list[tuple[int, str, str]]:
    """Run several ``nsn`` commands at once (each a fresh process) and wait for them all."""
    procs = [start(*argv, cwd=cwd, file_limit=file_limit) for argv in cases]
    return [finish(proc) for proc in procs]


def one_line(err: str) -> str:
    """The single line on stderr (no traceback, nothing else)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and a hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*") if LEFTOVER.match(p.name))


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Poll ``condition()`` until true; fail if the process ends first."""
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"nsn ended before the fault was injected: {proc.communicate()}"
        assert time.time() < deadline, "timed out waiting for nsn to start its work"
        time.sleep(0.01)


def interrupt_when(proc: subprocess.Popen, condition) -> tuple[int, str, str]:
    """Send SIGINT (Ctrl-C) once ``condition()`` holds, while the process is working."""
    wait_for(condition, proc)
    proc.send_signal(signal.SIGINT)
    return finish(proc)


def temporaries_of(path: Path):
    return lambda: any(path.parent.glob(f".{path.name}.*.tmp"))


@contextlib.contextmanager
def read_only(folder: Path):
    """Make ``folder`` read-only for a child process. Mode bits do not stop root, so as root
    the folder is made immutable (chattr +i); the test is skipped only if neither works."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        undo = [lambda: folder.chmod(0o755)]
    else:
        made = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True) if shutil.which("chattr") else None
        if made is None or made.returncode != 0:
            pytest.skip(f"root, and chattr +i failed ({made.stderr.strip() if made else 'no chattr'}): no read-only folder")
        undo = [lambda: subprocess.run(["chattr", "-i", str(folder)], check=True)]
    try:
        probe = folder / "probe"
        with contextlib.suppress(OSError):
            probe.touch()
            probe.unlink()
            pytest.skip(f"{folder} stays writable after being made read-only")
        yield
    finally:
        undo[0]()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, mnist_small, tiny_model):
    """A folder with a model, a data set, a sample array, digit PNGs and a mask; and numba's
    cache warmed for every kernel the commands below run (a cold kernel's cache write would
    be the first write to fail under a file size limit)."""
    import imageio.v3 as iio

    from nsn_cli.cli import run

    folder = tmp_path_factory.mktemp("inputs")
    shutil.copy(tiny_model[0], folder / "model.h5")
    shutil.copy(mnist_small, folder / "data.h5")
    with h5py.File(mnist_small) as handle:
        digits = (handle["images"][:40, ..., 0] * 255).astype(np.uint8)
    np.savez(folder / "samples.npz", images=digits[..., None].astype(np.float32) / 255)
    (folder / "digits").mkdir()
    for i, digit in enumerate(digits):
        iio.imwrite(folder / "digits" / f"d{i:02d}.png", digit)
    mask = np.zeros((28, 28), np.uint8)
    mask[8:20, 8:20] = 255
    iio.imwrite(folder / "mask.png", mask)
    warm = tmp_path_factory.mktemp("warm")
    for argv in (["sample", "-m", folder / "model.h5", "-n", "8", "-o", warm / "s.npz"],
                 ["sample", "-m", folder / "model.h5", "-n", "8", "-o", warm / "s.h5"],
                 ["inpaint", folder / "digits" / "d00.png", "--mask", folder / "mask.png", "-m", folder / "model.h5",
                  "-o", warm / "i.png", "--draws", "2"],
                 ["style", folder / "digits" / "d00.png", "-m", folder / "model.h5", "-o", warm / "st.png"],
                 ["score", folder / "samples.npz", "--ref", folder / "data.h5", "--metrics", "swd", "-q"]):
        assert run([str(a) for a in argv]) == 0, argv
    return folder


# --------------------------------------------------------------------------- Ctrl-C


def _layers_in(path: Path) -> int:
    with h5py.File(path) as handle:
        return int(handle.attrs["layers-complete"])


@pytest.mark.slow
def test_ctrl_c_in_train_keeps_completed_layers_and_resumes(tmp_path, inputs):
    out = tmp_path / "m.h5"
    argv = ["train", inputs / "data.h5", "-o", out, "--iterations", "4", "--seed", "5", "-q"]
    code, _, err = interrupt_when(start(*argv, cwd=tmp_path), out.exists)  # after layer 1's checkpoint
    kept = _layers_in(out)
    assert code == INTERRUPTED
    assert one_line(err) == (f"interrupted: {out} keeps {kept} of 3 completed layers; "
                             "continue with the same command and --resume"), err
    assert 1 <= kept < 3 and leftovers(tmp_path) == []
    code, _, err = finish(start(*argv, "--resume", cwd=tmp_path))
    assert code == 0, err
    assert _layers_in(out) == 3 and leftovers(tmp_path) == []


def test_ctrl_c_before_the_first_layer_writes_nothing(tmp_path, inputs):
    out = tmp_path / "m.h5"
    lock = tmp_path / ".m.h5.lock"  # taken once the output is checked, before the data is read
    code, _, err = interrupt_when(start("train", inputs / "data.h5", "-o", out, "-q", cwd=tmp_path), lock.exists)
    assert code == INTERRUPTED
    assert re.fullmatch(r"interrupted: nothing was written.*", one_line(err)), err
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.slow
def test_ctrl_c_during_the_top_statistics(tmp_path, inputs):
    out = tmp_path / "m.h5"
    shutil.copy(inputs / "model.h5", out)
    with h5py.File(out, "r+") as handle:  # three layers, the statistics still to gather
        del handle["top"]
    before = snapshot(tmp_path)
    proc = start("train", inputs / "data.h5", "-o", out, "--iterations", "4", "--seed", "3", "--resume", cwd=tmp_path)
    lines: list[str] = []

    def read() -> None:
        lines.extend(proc.stderr)

    reader = threading.Thread(target=read)
    reader.start()
    wait_for(lambda: any(line.startswith("top-layer statistics") for line in lines), proc)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=300)
    reader.join()
    assert proc.returncode == INTERRUPTED
    assert lines[-1].strip() == (f"interrupted: {out} keeps all 3 layers but not the top-layer statistics; "
                                 "finish with the same command and --resume"), lines
    assert sum("interrupted" in line for line in lines) == 1 and not any("Traceback" in line for line in lines)
    assert snapshot(tmp_path) == before and leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", ["h5", pytest.param("png", marks=pytest.mark.slow)])
def test_ctrl_c_in_sample(tmp_path, inputs, kind):
    out = tmp_path / f"s.{kind}"
    proc = start("sample", "-m", inputs / "model.h5", "-n", "300000" if kind == "h5" else "100000", "-o", out, "-q",
                 cwd=tmp_path)
    if kind == "h5":  # streamed: interrupted while its temporary file is being written
        code, _, err = interrupt_when(proc, temporaries_of(out))
    else:  # generated in memory first
        started = time.time()
        code, _, err = interrupt_when(proc, lambda: time.time() > started + 4)
    assert code == INTERRUPTED
    assert one_line(err) == "interrupted: nothing was written (no partial file is left)"
    assert not out.exists() and leftovers(tmp_path) == []


def test_ctrl_c_in_prep(tmp_path):
    out = tmp_path / "d.h5"
    proc = start("prep", MNIST_IMAGES, "-o", out, "--size", "28", "--zca", "-q", cwd=tmp_path)
    code, _, err = interrupt_when(proc, (tmp_path / ".d.h5.lock").exists)  # reading the images
    assert code == INTERRUPTED and one_line(err) == "interrupted: nothing was written (no partial file is left)"
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.slow
def test_ctrl_c_in_score(tmp_path, inputs):
    scores = tmp_path / "s.json"
    proc = start("score", inputs / "model.h5", "--ref", inputs / "data.h5", "-n", "100000", "--metrics", "swd",
                 "--json", scores, "-q", cwd=tmp_path)
    started = time.time()
    code, _, err = interrupt_when(proc, lambda: time.time() > started + 4)  # sampling the model by then
    assert code == INTERRUPTED and one_line(err) == "interrupted: nothing was written (no partial file is left)"
    assert not scores.exists() and leftovers(tmp_path) == []


@pytest.mark.slow
def test_ctrl_c_in_inpaint_keeps_the_finished_images(tmp_path, inputs):
    out = tmp_path / "filled"
    proc = start("inpaint", inputs / "digits", "--mask", inputs / "mask.png", "-m", inputs / "model.h5", "-o", out,
                 "--draws", "64", "--rounds", "3", "-q", cwd=tmp_path)
    code, stdout, err = interrupt_when(proc, lambda: (out / "d01.png").exists())
    written = sorted(p.name for p in out.iterdir())
    assert code == INTERRUPTED and 2 <= len(written) < 40
    assert one_line(err) == (f"interrupted: {len(written)} of 40 images were written to {out}/ (each complete); "
                             "the rest were not started")
    assert written == [f"d{i:02d}.png" for i in range(len(written))] and leftovers(tmp_path) == []


@pytest.mark.slow
def test_ctrl_c_at_a_terminal_with_dask_workers(tmp_path, inputs):
    """A terminal sends Ctrl-C to the whole process group, the local Dask workers included:
    they ignore it (they printed KeyboardInterrupt tracebacks) and train stops the cluster."""
    pytest.importorskip("distributed")
    out = tmp_path / "m.h5"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nsn_cli", "train", str(inputs / "data.h5"), "-o", str(out), "--iterations", "4",
         "--seed", "5", "--memory", "360M", "--workers", "2", "-q"],
        cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        preexec_fn=_child_setup(None))
    wait_for(out.exists, proc)
    os.killpg(proc.pid, signal.SIGINT)
    code, _, err = finish(proc)
    assert code == INTERRUPTED and re.fullmatch(rf"interrupted: {re.escape(str(out))} keeps \d of 3 completed layers; .*",
                                                one_line(err)), err
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_ctrl_c_at_random_moments_of_a_streamed_write(tmp_path, inputs):
    """Ctrl-C may land while HDF5 is inside the file object's methods, or while it closes."""
    out = tmp_path / "s.h5"
    rng = np.random.default_rng(0)
    for delay in rng.uniform(0.0, 1.5, size=5):
        proc = start("sample", "-m", inputs / "model.h5", "-n", "300000", "-o", out, "-q", cwd=tmp_path)
        wait_for(temporaries_of(out), proc)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        code, _, err = finish(proc)
        assert code == INTERRUPTED and one_line(err).startswith("interrupted: "), (delay, err)
        assert not out.exists() and leftovers(tmp_path) == [], delay


# --------------------------------------------------------------------------- kill -9


@pytest.mark.slow
def test_kill_9_leaves_a_temporary_the_next_writer_removes(tmp_path, inputs):
    out = tmp_path / "s.h5"
    proc = start("sample", "-m", inputs / "model.h5", "-n", "300000", "-o", out, "-q", cwd=tmp_path)
    wait_for(temporaries_of(out), proc)
    time.sleep(0.3)
    proc.kill()
    proc.wait()
    stale = list(tmp_path.glob(".s.h5.*.tmp"))
    assert len(stale) == 1 and stale[0].name.startswith(f".s.h5.{proc.pid}.")
    code, stdout, err = finish(start("sample", "-m", inputs / "model.h5", "-n", "8", "-o", out, "-q", cwd=tmp_path))
    assert code == 0, err
    assert leftovers(tmp_path) == []  # the temporary and the lock file of the killed process are gone


def test_stale_temporaries_are_only_those_of_dead_writers(tmp_path):
    out = tmp_path / "m.h5"
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid with no process now
    reused = subprocess.Popen(["sleep", "30"])  # a live process started after the file below
    try:
        files = {
            "dead": tmp_path / f".m.h5.{gone.pid}.abc123.tmp",
            "reused": tmp_path / f".m.h5.{reused.pid}.def456.tmp",
            "live": tmp_path / f".m.h5.{os.getppid()}.ghi789.tmp",  # the parent of this process: alive
            "other": tmp_path / f".n.h5.{gone.pid}.abc123.tmp",  # another output's
            "foreign": tmp_path / ".m.h5.notapid.tmp",  # not ours
        }
        for path in files.values():
            path.write_bytes(b"x")
        hour_ago = time.time() - 3600
        os.utime(files["reused"], (hour_ago, hour_ago))
        removed = remove_stale_temporaries(out)
        assert sorted(removed) == sorted([files["dead"], files["reused"]])
        assert all(files[k].exists() for k in ("live", "other", "foreign"))
    finally:
        reused.kill()
        reused.wait()


# --------------------------------------------------------------------------- read-only folder, full disk


#: One command per kind of output (its output named OUT, its folder DIR); the first two run
#: in the fast suite.
WRITERS = {
    "sample.h5": ["sample", "-m", "{model}", "-n", "64", "-o", "OUT.h5", "-q"],
    "train": ["train", "{data}", "-o", "OUT.h5", "--iterations", "2", "-q"],
    "sample.png": ["sample", "-m", "{model}", "-n", "64", "-o", "OUT.png", "-q"],
    "sample.npz": ["sample", "-m", "{model}", "-n", "64", "-o", "OUT.npz", "-q"],
    "sample.npy": ["sample", "-m", "{model}", "-n", "64", "-o", "OUT.npy", "-q"],
    "sample folder": ["sample", "-m", "{model}", "-n", "8", "-o", "OUT/", "-q"],
    "prep": ["prep", "{data}", "-o", "OUT.h5", "-q"],
    "score --json": ["score", "{samples}", "--ref", "{data}", "--metrics", "swd", "--json", "OUT.json", "-q"],
    "inpaint": ["inpaint", "{digit}", "--mask", "{mask}", "-m", "{model}", "-o", "OUT.png", "--draws", "2"],
    "style": ["style", "{digit}", "-m", "{model}", "-o", "OUT.png"],
}
# test-fast runs each fault on the first writer (a sample file); every writer runs in the full suite
WRITER_CASES = [name if i < 1 else pytest.param(name, marks=pytest.mark.slow) for i, name in enumerate(WRITERS)]


def writer(name: str, inputs: Path, folder: Path) -> tuple[list[str], str]:
    """The command ``WRITERS[name]`` writing into ``folder``, and its output's path."""
    files = {"model": inputs / "model.h5", "data": inputs / "data.h5", "samples": inputs / "samples.npz",
             "digit": inputs / "digits" / "d00.png", "mask": inputs / "mask.png"}
    argv = [a.format(**files) if "{" in a else a.replace("OUT", f"{folder}/out") for a in WRITERS[name]]
    output = next(a for a in argv if a.startswith(f"{folder}/out"))
    return argv, output.rstrip("/")


@pytest.mark.parametrize("name", WRITER_CASES)
def test_read_only_folder_is_one_line_and_changes_nothing(tmp_path, inputs, name):
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "keep.txt").write_text("an existing file")
    argv, output = writer(name, inputs, folder)
    before = snapshot(folder)
    with read_only(folder):
        code, _, err = finish(start(*argv, cwd=tmp_path))
    assert code == 2, err
    line = one_line(err)
    assert line.startswith(f"error: {output}") and "cannot write" in line, err
    assert "read-only" in line or "permission" in line, err
    assert snapshot(folder) == before and leftovers(folder) == []


@pytest.mark.parametrize("name", WRITER_CASES)
def test_full_disk_is_one_line_and_leaves_nothing(tmp_path, inputs, name):
    """A 100-byte file size limit: the first write of every output fails (Python ignores
    SIGXFSZ, so the write raises EFBIG). HDF5 outputs used to crash the process at exit."""
    folder = tmp_path / "full"
    folder.mkdir()
    (folder / "keep.txt").write_text("an existing file")
    argv, output = writer(name, inputs, folder)
    before = snapshot(folder)
    code, _, err = finish(start(*argv, cwd=tmp_path, file_limit=100))
    assert code == 2, err  # not -11: no crash after the failed write
    line = one_line(err)
    assert line.startswith(f"error: {output}") and "ulimit -f" in line, err
    if name == "train":
        assert line.endswith(f"nothing was written to {output}"), err
    assert snapshot(folder) == before and leftovers(folder) == []


@pytest.mark.slow
def test_full_disk_keeps_the_model_train_would_replace(tmp_path, inputs):
    out = tmp_path / "m.h5"
    shutil.copy(inputs / "model.h5", out)
    before = snapshot(tmp_path)
    code, _, err = finish(start("train", inputs / "data.h5", "-o", out, "--force", "--iterations", "2", "-q",
                                cwd=tmp_path, file_limit=100))
    assert code == 2 and one_line(err).endswith(f"nothing was written to {out}"), err
    assert snapshot(tmp_path) == before and leftovers(tmp_path) == []


@pytest.mark.slow
def test_full_disk_mid_stream_stops_the_write(tmp_path, inputs):
    """A streamed .h5 that outgrows the limit after some batches: stopped there, not after
    generating every batch into a file that cannot hold them."""
    out = tmp_path / "s.h5"
    started = time.time()
    code, _, err = finish(start("sample", "-m", inputs / "model.h5", "-n", "2000000", "-o", out, "-q",
                                cwd=tmp_path, file_limit=256 << 10))
    assert code == 2 and one_line(err).startswith(f"error: {out}: cannot write"), err
    assert time.time() - started < 120  # 2,000,000 samples take far longer
    assert not out.exists() and leftovers(tmp_path) == []


def test_failed_folder_write_removes_the_pngs_it_added(tmp_path, inputs):
    folder = tmp_path / "pngs"
    folder.mkdir()
    (folder / "old.png").write_bytes(b"keep")
    (folder / "5.png").mkdir()  # sample 5 cannot be written: a folder has its name
    code, _, err = finish(start("sample", "-m", inputs / "model.h5", "-n", "8", "-o", f"{folder}/", "--force", "-q",
                                cwd=tmp_path))
    assert code == 2 and one_line(err).startswith(f"error: {folder}/5.png: cannot write"), err
    assert sorted(p.name for p in folder.iterdir()) == ["5.png", "old.png"]
    assert (folder / "old.png").read_bytes() == b"keep" and leftovers(tmp_path) == []


@pytest.mark.slow
def test_full_disk_while_numba_writes_its_cache(tmp_path, inputs):
    """A kernel compiled on a full disk: numba's cache write fails; one line, exit 2."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "nsn_cli", "sample", "-m", str(inputs / "model.h5"), "-n", "8",
                             "-o", str(tmp_path / "s.npz"), "-q"], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_child_setup(100))
    code, _, err = finish(proc)
    line = one_line(err)
    assert code == 2 and line.startswith("error: cannot write a file of numba: ") and "ulimit -f" in line, err
    assert not (tmp_path / "s.npz").exists() and leftovers(tmp_path) == []


# --------------------------------------------------------------------------- two writers


@pytest.mark.slow
def test_two_trains_to_one_output_one_is_refused(tmp_path, inputs):
    out = tmp_path / "m.h5"
    argv = ["train", inputs / "data.h5", "-o", out, "--iterations", "4", "--force", "-q"]
    results = run_all([argv, argv], cwd=tmp_path)  # both start at once; one takes the lock
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    winner = next(i for i, (code, _, _) in enumerate(results) if code == 0)
    refused = one_line(results[1 - winner][2])
    assert re.fullmatch(rf"error: {re.escape(str(out))}: another nsn process \(pid \d+\) is writing it; "
                        "wait for it to finish or choose another output", refused), refused
    assert _layers_in(out) == 3 and leftovers(tmp_path) == []


@pytest.mark.parametrize("other", ["train", pytest.param("prep", marks=pytest.mark.slow),
                                   pytest.param("sample", marks=pytest.mark.slow)])
@pytest.mark.slow
def test_a_running_writer_refuses_a_second_one(tmp_path, inputs, other):
    out = tmp_path / "s.h5"
    first = start("sample", "-m", inputs / "model.h5", "-n", "300000", "-o", out, "-q", cwd=tmp_path)
    wait_for(temporaries_of(out), first)
    argv = {"prep": ["prep", inputs / "data.h5", "-o", out, "--force", "-q"],
            "train": ["train", inputs / "data.h5", "-o", out, "--force", "-q"],
            "sample": ["sample", "-m", inputs / "model.h5", "-n", "8", "-o", out, "--force", "-q"]}[other]
    code, _, err = finish(start(*argv, cwd=tmp_path))
    assert first.poll() is None, "the first writer ended before the second tried"
    assert code == 2 and one_line(err) == (f"error: {out}: another nsn process (pid {first.pid}) is writing it; "
                                           "wait for it to finish or choose another output"), err
    first.send_signal(signal.SIGINT)
    code, _, err = finish(first)
    assert code == INTERRUPTED and not out.exists() and leftovers(tmp_path) == []


def test_input_files_answer_as_same_file(tmp_path):
    """InputFiles (asked once per output of a folder command) agrees with same_file pair by
    pair: hard links, symlinks, relative spellings and not-yet-existing outputs."""
    import os

    from nsn_cli.files import InputFiles, same_file

    (tmp_path / "a.png").write_bytes(b"a")
    os.link(tmp_path / "a.png", tmp_path / "hard.png")
    (tmp_path / "link.png").symlink_to(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"b")
    inputs = [tmp_path / "a.png", tmp_path / "missing-input.png"]
    known = InputFiles(inputs)
    for name in ["a.png", "hard.png", "link.png", "b.png", "missing-input.png", "new.png", "sub/../a.png"]:
        path = tmp_path / name
        assert (path in known) == any(same_file(path, source) for source in inputs), name
    assert (tmp_path / "hard.png") in known and (tmp_path / "b.png") not in known


def test_a_ctrl_c_dropped_as_unraisable_is_kept_pending():
    """A Ctrl-C raised inside a weakref callback (an object freed at that moment) is one
    Python prints and drops; under the CLI's handler it stays pending, so the job stops at the
    next check instead of running to a silent success. Outside the handler, the hook is back."""
    import weakref

    from nsn_cli import interrupts

    class Freed:
        pass

    def callback(_):
        raise KeyboardInterrupt

    before = sys.unraisablehook
    # the handler is only installed over Python's own (another test may have left SIGINT else)
    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with interrupts.handled():
            thing = Freed()
            ref = weakref.ref(thing, callback)
            del thing  # the callback runs here; its exception cannot propagate
            assert ref() is None and interrupts.pending()
            with pytest.raises(KeyboardInterrupt):
                interrupts.check()
            assert not interrupts.pending()
    finally:
        signal.signal(signal.SIGINT, saved)
    assert sys.unraisablehook is before


@pytest.mark.slow  # a fresh nsn process each (numba's kernels loaded anew): 5-7 s
def test_a_ctrl_c_after_the_last_write_names_the_finished_output(tmp_path, inputs):
    """A real SIGINT while ``nsn train`` prints its summary, after the model file is complete:
    the line says the model was written, not "nothing was written", and the exit is 130."""
    out = tmp_path / "m.h5"
    child = f"""
import os, signal, sys, time
import rich.table
made = rich.table.Table.__init__
def table(self, *args, **kwargs):
    made(self, *args, **kwargs)
    if str(kwargs.get("title", "")).startswith("trained"):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)  # the handler runs at the next bytecode, here
rich.table.Table.__init__ = table
sys.argv = ["nsn", "train", {str(inputs / "data.h5")!r}, "-o", {str(out)!r}, "--iterations", "2", "--seed", "1"]
from nsn_cli.entry import main
main()
"""
    done = subprocess.run([sys.executable, "-c", child], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          preexec_fn=_child_setup(None))
    assert done.returncode == INTERRUPTED, done.stderr
    line = [text for text in done.stderr.splitlines() if text.startswith("interrupted")]
    assert line == [f"interrupted: the job had written {out} (complete) before it stopped; nothing else was written"], \
        done.stderr
    assert h5py.File(out, "r").attrs["layers-complete"] == 3 and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow  # a fresh nsn process each (numba's kernels loaded anew): 5-7 s
def test_a_ctrl_c_while_a_finished_job_exits_changes_nothing(tmp_path, inputs):
    """A real SIGINT while the process exits after a finished job (its exit handlers running):
    status 0 and the job's own output only, not a death by signal or a traceback."""
    out = tmp_path / "s.npz"
    child = f"""
import atexit, os, signal, sys, time
sys.argv = ["nsn", "sample", "-m", {str(inputs / "model.h5")!r}, "-n", "4", "-o", {str(out)!r}]
from nsn_cli.entry import main

def late_ctrl_c():
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.5)

atexit.register(late_ctrl_c)  # runs before nsn's own exit handler
main()
"""
    done = subprocess.run([sys.executable, "-c", child], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          preexec_fn=_child_setup(None))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "interrupted" not in done.stderr and "Exception" not in done.stderr
    assert np.load(out)["images"].shape == (4, 28, 28, 1)


def test_a_ctrl_c_caught_after_escaping_exec_still_exits_130(tmp_path):
    """CPython notes a KeyboardInterrupt that escapes ``exec`` of a string as unhandled, even
    when caught, and ends a ``python -m`` process by SIGINT after finalising; imports run such
    code, so a Ctrl-C landing in one made ``python -m nsn_cli sample`` die by signal though it
    had reported the interrupt. The exit after a handled Ctrl-C keeps status 130 all the same."""
    child = """
import sys
from nsn_cli import entry
try:
    exec("raise KeyboardInterrupt")
except KeyboardInterrupt:
    print("interrupted: handled", file=sys.stderr)
entry.exit_interrupted()
"""
    (tmp_path / "bare.py").write_text(child.replace("entry.exit_interrupted()", "sys.exit(130)"))
    (tmp_path / "child.py").write_text(child)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    bare = subprocess.run([sys.executable, "-m", "bare"], capture_output=True, text=True, timeout=60, env=env,
                          preexec_fn=_child_setup(None))
    assert bare.returncode == -signal.SIGINT, bare.stderr  # CPython's doing (else this test guards nothing)
    done = subprocess.run([sys.executable, "-m", "child"], capture_output=True, text=True, timeout=60, env=env,
                          preexec_fn=_child_setup(None))
    assert done.returncode == INTERRUPTED, done.stderr
    assert one_line(done.stderr) == "interrupted: handled"


def test_the_end_of_a_command_skips_only_the_interpreters_teardown(tmp_path):
    """After a command the process ends from the last exit handler: with the command's status,
    its buffered output flushed (to a pipe too), every other exit handler run (finalizers of
    temporary folders among them), and CPython's teardown (objects' __del__ at shutdown) skipped."""
    child = """
import atexit, sys, tempfile, weakref
from nsn_cli import entry

class TornDown:
    def __del__(self, _open=open):  # the builtin bound now: the teardown clears names first
        _open("torn-down", "w").close()

keep = TornDown()  # a module global: deleted only by the interpreter's teardown
folder = tempfile.TemporaryDirectory(dir=".")  # removed by its finalizer at exit
open("folder", "w").write(folder.name)
atexit.register(lambda: open("handler-ran", "w").close())
sys.stdout.write("x" * 100000 + "end")  # buffered, not flushed
entry.exit_with(3)
"""
    done = subprocess.run([sys.executable, "-c", child], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "x" * 100000 + "end" and done.stderr == ""
    assert (tmp_path / "handler-ran").exists() and not Path((tmp_path / "folder").read_text()).exists()
    assert not (tmp_path / "torn-down").exists()
    without = subprocess.run([sys.executable, "-c", child.replace("entry.exit_with(3)", "sys.exit(3)")], cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
    assert without.returncode == 3 and (tmp_path / "torn-down").exists()  # a plain exit runs the teardown


@pytest.mark.parametrize("module", ["numba", "nsn_cli.cli"])
def test_ctrl_c_while_nsn_starts_is_one_line_and_130(tmp_path, module):
    """A real SIGINT at the moment Python imports ``module`` for the console script, before the
    CLI's own handling is in place (about half a second of every run)."""
    child = f"""
import importlib.abc, os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
class SignalOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == {module!r}:
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, SignalOnImport())
sys.argv = ["nsn", "info", "model.h5"]
from nsn_cli.entry import main
main()
"""
    done = subprocess.run([sys.executable, "-c", child], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 130, done.stderr
    assert "nothing was written" in one_line(done.stderr)
