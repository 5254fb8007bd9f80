"""Fetching real data from the package registry: a failure is a failure (never a skip), only a network error reads
as "registry unreachable", the test session has a cache folder of its own, and a converted model is reused only
when the tltf version and the converter's source are the ones that made it.

Everything here runs offline: pip is pointed at a local folder (the ``local_pip`` fixture) or at a port nothing
listens on; only the last test (marked ``network``) converts the real checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest

from tltf.data import offline
from tltf.errors import TltfError

TESTS = Path(__file__).resolve().parent


def _wheel(folder: Path, name: str = "tltfdemo", version: str = "1.0", files: dict | None = None) -> Path:
    """A minimal valid pure-Python wheel holding ``files``."""
    files = files or {f"{name}/data/hello.txt": b"hello from a wheel\n"}
    dist = f"{name}-{version}.dist-info"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    members = dict(files)
    members[f"{dist}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    members[f"{dist}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = "".join(f"{m},,\n" for m in members) + f"{dist}/RECORD,,\n"
    members[f"{dist}/RECORD"] = record.encode()
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in members.items():
            zf.writestr(member, data)
    return path


# --- what pip's failures become ---------------------------------------------------------------------------------

def test_unreachable_registry_is_registry_unreachable_with_pips_network_error(local_pip, tmp_path):
    local_pip.setenv("TLTF_CACHE", str(tmp_path / "cache"))
    local_pip.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens on the discard port
    local_pip.setenv("PIP_RETRIES", "1")  # pip names the connection error only when it retries
    with pytest.raises(offline.RegistryUnreachable) as caught:
        offline.fetch_wheel("foolbox==3.3.4")
    message = str(caught.value)
    assert "unreachable" in message and "Connection refused" in message, message
    assert "No matching distribution found for foolbox==3.3.4" in message  # pip's own error, verbatim
    assert isinstance(caught.value, offline.WheelFetchError) and isinstance(caught.value, TltfError)


def test_any_other_pip_failure_is_a_fetch_error_not_unreachable(local_pip, tmp_path):
    """A reachable source without the wheel (here a local folder; on the registry: a wrong version, no wheel for
    this platform) is not "unreachable": tests fail on it with pip's error. The old code called every non-zero
    pip exit "registry unreachable", and the tests skipped."""
    local_pip.setenv("TLTF_CACHE", str(tmp_path / "cache"))
    local_pip.setenv("PIP_NO_INDEX", "1")
    local_pip.setenv("PIP_FIND_LINKS", str(tmp_path / "links"))
    _wheel(tmp_path / "links", "tltfdemo", "1.0")
    with pytest.raises(offline.WheelFetchError) as caught:
        offline.fetch_wheel("tltfdemo==9.9")
    assert not isinstance(caught.value, offline.RegistryUnreachable)
    message = str(caught.value)
    assert "could not download tltfdemo==9.9 with pip (exit 1)" in message
    assert "No matching distribution found for tltfdemo==9.9" in message and "1.0" in message, message


def test_pip_output_classification():
    refused = ("WARNING: Retrying (Retry(total=0)) after connection broken by 'NewConnectionError(...: Failed to "
               "establish a new connection: [Errno 111] Connection refused')': /simple/foolbox/")
    dns = "... [Errno -3] Temporary failure in name resolution"
    timeout = "ReadTimeoutError(\"HTTPSConnectionPool(host='pypi.org', port=443): Read timed out. (read timeout=15)\")"
    for line in (refused, dns, timeout):
        assert offline.NETWORK_ERRORS.search(line), line
    for line in ("ERROR: Could not find a version that satisfies the requirement x==9 (from versions: 1.0, 2.0)",
                 "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE.",
                 "ERROR: x-1.0-cp39-cp39-win_amd64.whl is not a supported wheel on this platform."):
        assert not offline.NETWORK_ERRORS.search(line), line
    assert offline._pip_errors("WARNING: w\nERROR: a\nERROR: b\n") == "ERROR: a ERROR: b"
    assert offline._pip_errors("") == "no output"


def test_a_wheel_is_fetched_once_and_a_damaged_one_is_an_error_naming_it(local_pip, tmp_path):
    local_pip.setenv("TLTF_CACHE", str(tmp_path / "cache"))
    local_pip.setenv("PIP_NO_INDEX", "1")
    local_pip.setenv("PIP_FIND_LINKS", str(tmp_path / "links"))
    _wheel(tmp_path / "links")
    path = offline.wheel_file("tltfdemo==1.0", "tltfdemo/data/hello.txt")
    assert path.read_bytes() == b"hello from a wheel\n" and path.is_relative_to(tmp_path / "cache")
    assert offline.wheel_members("tltfdemo==1.0", "tltfdemo/") == ["tltfdemo/data/hello.txt"]
    with pytest.raises(TltfError, match="has no file tltfdemo/nothing"):
        offline.wheel_file("tltfdemo==1.0", "tltfdemo/nothing")
    cached = offline.fetch_wheel("tltfdemo==1.0")
    cached.write_bytes(b"not a zip")  # e.g. a disk error after pip verified it
    path.unlink()
    with pytest.raises(offline.WheelFetchError, match=f"{cached.name}: not a readable wheel"):
        offline.wheel_file("tltfdemo==1.0", "tltfdemo/data/hello.txt")


def test_no_test_turns_a_fetch_error_into_a_skip():
    """The fixtures used to catch RegistryUnreachable and skip: a registry failure hid every real-data test."""
    offenders = [p.name for p in sorted(TESTS.glob("*.py")) if p.name != Path(__file__).name
                 and ("RegistryUnreachable" in p.read_text() or "WheelFetchError" in p.read_text())]
    assert offenders == []


def test_an_unmarked_test_that_fetches_fails_and_network_fixtures_are_deselected_offline(pytester):
    """The guard of conftest.py: a test not marked network that reaches for the registry fails (it would break an
    offline ``-m "not network"`` run), and a test using a registry fixture is marked network for it."""
    pytester.makeconftest((TESTS / "conftest.py").read_text())
    pytester.makeini("[pytest]\nmarkers =\n    network: registry\n")
    pytester.makepyfile(test_guarded="""
        from tltf.data import offline

        def test_unmarked_fetch():
            offline.wheel_file("foolbox==3.3.4", "foolbox/data/imagenet_00_243.jpg")

        def test_uses_weights(torchvision_weights):
            raise AssertionError("never runs offline")
    """)
    result = pytester.runpytest_subprocess("-m", "not network", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, deselected=1)
    result.stdout.fnmatch_lines(["*reaches for the package registry in a test not marked network*"])


# --- the cache: the session's own, and converted weights rebuilt when the converter changes ----------------------

def test_the_session_has_its_own_cache_folder():
    folder = Path(os.environ["TLTF_CACHE"])
    assert folder != Path.home() / ".cache" / "tltf" and offline.cache_dir() == folder
    assert folder.name.startswith("tltf_cache")  # made by conftest.py's session fixture


@pytest.fixture
def fake_conversion(monkeypatch, tmp_path):
    """resolve() with the wheel and the conversion replaced by stand-ins that count the conversions."""
    import tltf.weights.torchvision as torchvision

    monkeypatch.setenv("TLTF_CACHE", str(tmp_path / "cache"))
    pth = tmp_path / "fake.pth"
    pth.write_bytes(b"checkpoint")
    monkeypatch.setattr(offline, "wheel_file", lambda requirement, member: pth)
    made = []

    def convert(source, arch, out):
        made.append((Path(source), arch))
        Path(out).write_text(f"conversion {len(made)}")

    monkeypatch.setattr(torchvision, "import_torchvision", convert)
    return made


def test_converted_weights_are_reused_only_with_the_same_tltf_and_converter(fake_conversion, monkeypatch, capsys):
    import tltf
    from tltf.weights import pretrained

    out = pretrained.resolve("torchvision:mobilenet_v2")
    record_path = out.with_name(out.name + ".json")
    record = json.loads(record_path.read_text())
    assert record == pretrained.cache_record("torchvision:mobilenet_v2")
    assert record["tltf_version"] == tltf.__version__
    digest = hashlib.sha256()
    for name in ("torchvision.py", "pth.py"):
        digest.update(name.encode() + b"\0" + (Path(pretrained.__file__).parent / name).read_bytes())
    assert record["converter_sha256"] == digest.hexdigest()
    assert len(fake_conversion) == 1 and out.read_text() == "conversion 1"

    assert pretrained.resolve("torchvision:mobilenet_v2") == out and len(fake_conversion) == 1  # reused

    record_path.write_text(json.dumps(record | {"converter_sha256": "0" * 64}))  # made by another converter
    capsys.readouterr()
    pretrained.resolve("torchvision:mobilenet_v2")
    assert len(fake_conversion) == 2 and out.read_text() == "conversion 2"
    assert "another converter_sha256: converting again" in capsys.readouterr().out
    assert json.loads(record_path.read_text()) == record

    monkeypatch.setattr(tltf, "__version__", "999.0")  # another tltf
    pretrained.resolve("torchvision:mobilenet_v2")
    assert len(fake_conversion) == 3 and json.loads(record_path.read_text())["tltf_version"] == "999.0"


def test_a_cached_model_without_its_record_is_converted_again(fake_conversion):
    """What the old cache held (a bare .keras, reused as-is whatever converter made it) is not trusted."""
    from tltf.weights import pretrained

    out = offline.cache_dir() / "weights" / "torchvision_mobilenet_v2.keras"
    out.parent.mkdir(parents=True)
    out.write_text("converted by an older tltf")
    assert pretrained.resolve("torchvision:mobilenet_v2") == out
    assert len(fake_conversion) == 1 and out.read_text() == "conversion 1"
    out.with_name(out.name + ".json").write_text("[not a record")
    pretrained.resolve("torchvision:mobilenet_v2")
    assert len(fake_conversion) == 2


@pytest.mark.network
def test_the_session_converts_the_real_weights_into_its_own_cache(torchvision_weights):
    from tltf.weights import pretrained

    path = Path(torchvision_weights)
    assert path.is_relative_to(Path(os.environ["TLTF_CACHE"])) and path.stat().st_size > 10_000_000
    record = json.loads(path.with_name(path.name + ".json").read_text())
    assert record == pretrained.cache_record("torchvision:mobilenet_v2")
