"""Framework noise off by default: edgemp prints its own output, not TensorFlow's, absl's, LiteRT's or coremltools'.

What is noise: the lines the frameworks print on every run whatever the model — absl's "All log messages before
absl::InitializeLog()", oneDNN and CPU-feature INFO lines, LiteRT's "Created TensorFlow Lite XNNPACK delegate",
coremltools' untested-version and "Failed to load _MLModelProxy" warnings. They come three ways, each handled
where it comes from:

- Python loggers (coremltools, absl, tensorflow, torch's pytree): set to ERROR before the frameworks load, unless
  the application configured them itself;
- C++ logging that reads the environment: TF_CPP_MIN_LOG_LEVEL=3 (what matters in a TensorFlow error reaches
  edgemp as an exception, which edgemp reports);
- C++ lines printed to file descriptor 2 regardless (absl before its initialisation, at `import tensorflow`;
  LiteRT's delegate line): fd 2 is captured around the import (`captured_fd2`), and the CLI filters its whole
  fd 2 through a small child process (`filtered_fd2`). Both drop only lines matching NOISE, one line at a time:
  everything else (an error, a crash's last words) is passed on; a failing import re-emits all it captured.

EDGEMP_LOG=debug (or `edgemp -v`) turns all of this off: every framework line is printed as the framework wrote it.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import io
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

# One line each, matched against a whole line of fd-2 output (bytes).
NOISE = (
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    rb"[IW]\d{4} [\d:.]+\s+\d+ [\w./-]+:\d+\] .*",  # absl/glog INFO and WARNING lines (E and F lines pass)
    rb"INFO: .*",  # LiteRT's minimal logging at INFO: "Created TensorFlow Lite XNNPACK delegate for CPU."
    rb"To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.",
)
_NOISE = re.compile(rb"^(?:" + rb"|".join(NOISE) + rb")\r?$")

# Python loggers set to ERROR unless the application gave them a level (then its choice stands).
QUIET_LOGGERS = ("absl", "tensorflow", "h5py", "coremltools", "torch.utils._pytree", "torchao", "litert_torch")
# Top-level modules whose import prints to fd 2 from C++ static initialisers.
QUIET_IMPORTS = frozenset({"tensorflow"})

_state = threading.local()
_verbose = False
_we_set_env: dict[str, str] = {}
_we_set_levels: list[str] = []


def noisy() -> bool:
    """True when framework output is wanted: EDGEMP_LOG=debug, or `edgemp -v` (show_framework_output)."""
    return _verbose or os.environ.get("EDGEMP_LOG", "").strip().lower() == "debug"


def is_noise(line: bytes) -> bool:
    return bool(_NOISE.match(line))


def drop_noise(data: bytes) -> bytes:
    """`data` without the NOISE lines (a last line without a newline is kept as it is)."""
    return b"".join(ln for ln in data.splitlines(keepends=True) if not is_noise(ln.rstrip(b"\n")))


def install() -> None:
    """Called once from edgemp/__init__, before any framework loads: environment defaults, quiet loggers,
    the quiet `import tensorflow`. Does nothing when noisy()."""
    if noisy():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")  # else edgemp's import_tf would default it to 3
        return
    for key, value in (("TF_CPP_MIN_LOG_LEVEL", "3"),):
        if key not in os.environ:
            os.environ[key] = value
            _we_set_env[key] = value
    for name in QUIET_LOGGERS:
        lg = logging.getLogger(name)
        if lg.level == logging.NOTSET:
            lg.setLevel(logging.ERROR)
            _we_set_levels.append(name)
    if not any(isinstance(f, _QuietImportFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImportFinder())


def show_framework_output() -> None:
    """Undo install() (`edgemp -v`): what edgemp set goes back to the frameworks' defaults; the application's own
    settings are left alone. TensorFlow reads its log level when it loads, so call this before it does."""
    global _verbose
    _verbose = True
    for key, value in _we_set_env.items():
        if os.environ.get(key) == value:
            os.environ[key] = "0"  # not popped: edgemp's import_tf would default it to 3 again
    _we_set_env.clear()
    for name in _we_set_levels:
        logging.getLogger(name).setLevel(logging.NOTSET)
    _we_set_levels.clear()


@contextlib.contextmanager
def captured_fd2() -> Iterator[None]:
    """Run the block with file descriptor 2 (what C/C++ code writes to) going to a temporary file; afterwards write
    back everything but the NOISE lines. If the block raises, everything captured is written back, noise included."""
    if noisy():
        yield
        return
    _flush_stderr()
    saved = os.dup(2)
    failed = True
    try:
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                yield
                failed = False
            except KeyboardInterrupt:
                failed = False  # not an error of the block: nothing to show but what it said
                raise
            finally:
                _flush_stderr()
                os.dup2(saved, 2)
                tmp.seek(0)
                data = tmp.read()
                data = data if failed else drop_noise(data)
                if data:
                    _write_all(2, data)
    finally:
        os.close(saved)


class _QuietLoader(importlib.abc.Loader):
    """Wraps the real loader of a QUIET_IMPORTS module for the one exec_module call; the module keeps its own loader."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def create_module(self, spec: Any) -> Any:
        return self._inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__loader__ = self._inner
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._inner
        with captured_fd2():
            self._inner.exec_module(module)


class _QuietImportFinder(importlib.abc.MetaPathFinder):
    """`import tensorflow` with fd 2 captured: its C++ libraries log while loading, before any setting reaches them."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in QUIET_IMPORTS or noisy() or getattr(_state, "finding", False):
            return None
        _state.finding = True
        try:
            spec = importlib.util.find_spec(fullname)
        except (ImportError, ValueError):
            return None
        finally:
            _state.finding = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        spec.loader = _QuietLoader(spec.loader)
        return spec


# The child that filters fd 2 for the CLI: line by line, at once; it outlives a crashing parent long enough to pass
# on its last words (a thread would die with it). SIGINT is not its business: the parent reports the interruption.
_FILTER = r"""
import os, re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
noise = re.compile(sys.argv[1].encode("latin-1"))
out, pending = sys.stdout.buffer, b""
while True:
    try:
        chunk = os.read(0, 65536)
    except InterruptedError:
        continue
    if not chunk:
        break
    *lines, pending = (pending + chunk).split(b"\n")
    kept = b"".join(ln + b"\n" for ln in lines if not noise.match(ln))
    if kept:
        out.write(kept)
        out.flush()
if pending and not noise.match(pending):
    out.write(pending)
    out.flush()
"""


@contextlib.contextmanager
def filtered_fd2() -> Iterator[None]:
    """For the CLI: the block's fd 2 goes through a child process that drops NOISE lines and passes the rest on as it
    comes. Python's sys.stderr keeps writing to the terminal directly (progress bars, edgemp's messages, logging), so
    only what C/C++ code (and child processes) write to fd 2 is filtered. A no-op when noisy() or when sys.stderr is
    not fd 2 (tests capturing output in-process)."""
    try:
        real = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        real = False
    if noisy() or not real:
        yield
        return
    _flush_stderr()
    saved = os.dup(2)
    r, w = os.pipe()
    try:
        child = subprocess.Popen([sys.executable, "-I", "-S", "-c", _FILTER, _NOISE.pattern.decode("latin-1")],
                                 stdin=r, stdout=saved, stderr=saved, close_fds=True, start_new_session=True)
    except OSError:
        os.close(r)
        os.close(w)
        os.close(saved)
        yield
        return
    os.close(r)
    old = sys.stderr
    # edgemp's own stderr: the terminal (a dup of the original fd 2, left open: logging handlers may keep it)
    sys.stderr = io.TextIOWrapper(io.FileIO(saved, "w", closefd=False), encoding=old.encoding,
                                  errors=old.errors or "backslashreplace", line_buffering=True, write_through=True)
    os.dup2(w, 2)
    os.close(w)
    try:
        yield
    finally:
        _flush_stderr()
        os.dup2(saved, 2)  # closes the parent's write end: the child sees end of file once its other writers are gone
        sys.stderr = old
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:  # a daemon the block started (adb) keeps the pipe open: leave the child
            pass


def _flush_stderr() -> None:
    for stream in (sys.stderr, sys.__stderr__):
        with contextlib.suppress(Exception):
            stream.flush()  # type: ignore[union-attr]


def _write_all(fd: int, data: bytes) -> None:
    while data:
        n = os.write(fd, data)
        data = data[n:]

