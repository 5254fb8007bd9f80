"""CI fails on a skip that is not about the GPU (issue 27): conftest.py's :class:`SkipWatch`, run in a pytest of
its own on a tiny test file, with ``CI=true``, with ``TLTF_NO_SKIPS=1`` and with neither."""

from pathlib import Path

import pytest

TESTS = Path(__file__).parent

#: the inner run's conftest: the SkipWatch of this suite's conftest.py (loaded under a name of its own, without
#: its fixtures, so the inner run needs no Keras)
CONFTEST = f"""
import importlib.util
spec = importlib.util.spec_from_file_location("tltf_suite_conftest", {str(TESTS / "conftest.py")!r})
suite = importlib.util.module_from_spec(spec)
spec.loader.exec_module(suite)
pytest_configure = suite.pytest_configure
"""

SKIPPING = """
import pytest

def test_passes():
    assert 1 + 1 == 2

def test_no_registry():
    pytest.skip("registry unreachable")

@pytest.mark.skipif(True, reason="needs a CUDA GPU")
def test_on_a_gpu():
    pass

@pytest.mark.xfail(reason="known", strict=True)
def test_expected_failure():
    assert False
"""


@pytest.fixture
def inner(pytester, monkeypatch):
    """Runs pytest in-process on the files a test wrote, under the environment it sets."""
    for name in ("CI", "TLTF_NO_SKIPS"):
        monkeypatch.delenv(name, raising=False)
    pytester.makeconftest(CONFTEST)

    def run(*args, **env):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rs", *args)
    return run


@pytest.mark.parametrize("env, args", [({"CI": "true"}, ()), ({"TLTF_NO_SKIPS": "1"}, ()),
                                       ({"CI": "true"}, ("-n", "2"))])  # as the suite runs: two xdist workers
def test_a_skip_for_another_reason_than_the_gpu_fails_ci(pytester, inner, env, args):
    pytester.makepyfile(test_inner=SKIPPING)
    result = inner(*args, **env)
    result.assert_outcomes(passed=1, skipped=2, xfailed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*skipped on CI*only a GPU reason may skip*",
                                 "SKIPPED test_inner.py::test_no_registry: registry unreachable",
                                 "1 test(s) skipped for a reason other than the GPU: the run fails"])
    listed = [line for line in result.outlines if line.startswith("SKIPPED test_inner.py::")]
    assert listed == ["SKIPPED test_inner.py::test_no_registry: registry unreachable"]  # not the GPU skip


def test_a_module_skipped_at_collection_fails_ci(pytester, inner):
    pytester.makepyfile(test_gone="""
        import pytest
        pytest.skip("optional dependency missing", allow_module_level=True)

        def test_never():
            pass
    """, test_ok="def test_passes():\n    pass\n")
    result = inner("-n", "2", CI="true")  # collected in the xdist workers; the skip still reaches SkipWatch
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["SKIPPED test_gone.py: optional dependency missing"])


def test_gpu_skips_pass_ci_and_other_skips_pass_outside_it(pytester, inner):
    pytester.makepyfile(test_inner=SKIPPING)
    outside = inner(CI="false")  # a developer's run: a skip is a skip
    outside.assert_outcomes(passed=1, skipped=2, xfailed=1)
    assert outside.ret == pytest.ExitCode.OK and "skipped on CI" not in outside.stdout.str()
    pytester.makepyfile(test_inner=SKIPPING.replace('pytest.skip("registry unreachable")', "pass"))
    on_ci = inner(CI="true")  # only the GPU skip is left
    on_ci.assert_outcomes(passed=2, skipped=1, xfailed=1)
    assert on_ci.ret == pytest.ExitCode.OK and "skipped on CI" not in on_ci.stdout.str()


def test_a_failing_run_keeps_its_failure(pytester, inner):
    pytester.makepyfile(test_inner=SKIPPING + "\ndef test_fails():\n    assert 0\n")
    result = inner(CI="true")
    result.assert_outcomes(passed=1, failed=1, skipped=2, xfailed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["SKIPPED test_inner.py::test_no_registry: registry unreachable"])
