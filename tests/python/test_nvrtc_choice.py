"""Which libnvrtc the CUDA path loads: torch's CUDA major first, then newest first (no GPU and no
real libnvrtc needed: the libraries are empty files on a fake ``sys.path``)."""

import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest

try:
    from sgpo_rs import _nvrtc
except ImportError:  # an installed build older than the module: test the source tree's copy
    _source = Path(__file__).resolve().parents[2] / "python" / "sgpo_rs" / "_nvrtc.py"
    _spec = importlib.util.spec_from_file_location("sgpo_rs_nvrtc_source", _source)
    _nvrtc = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_nvrtc)


def _touch(root, relative):
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return str(path)


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A fake site-packages holding the libnvrtc layouts of the CUDA 12 and 13 wheels."""
    monkeypatch.delenv("SGPO_RS_NVRTC", raising=False)
    first, second = tmp_path / "first", tmp_path / "second"
    libs = {
        "cu12": _touch(first, "nvidia/cuda_nvrtc/lib/libnvrtc.so.12"),
        "cu12_builtins": _touch(first, "nvidia/cuda_nvrtc/lib/libnvrtc-builtins.so.12.8"),
        "cu13": _touch(second, "nvidia/cu13/lib/libnvrtc.so.13"),
        "cu13_builtins": _touch(second, "nvidia/cu13/lib/libnvrtc-builtins.so.13.0"),
        "cu11": _touch(second, "nvidia/cuda_nvrtc/lib/libnvrtc.so.11.2"),
        # No version in the name: the major comes from the folder.
        "cu14": _touch(second, "nvidia/cu14/lib/libnvrtc.so"),
    }
    monkeypatch.setattr(sys, "path", [str(first), str(tmp_path / "missing"), str(second)])
    return libs


def test_newest_major_first_without_a_preference(site):
    assert _nvrtc.candidates(None) == [site["cu14"], site["cu13"], site["cu12"], site["cu11"]]


def test_preferred_major_comes_first(site):
    assert _nvrtc.candidates(12) == [site["cu12"], site["cu14"], site["cu13"], site["cu11"]]
    assert _nvrtc.candidates(13) == [site["cu13"], site["cu14"], site["cu12"], site["cu11"]]


def test_an_absent_preferred_major_keeps_newest_first(site):
    assert _nvrtc.candidates(10) == _nvrtc.candidates(None)


def test_builtins_are_never_candidates(site):
    assert not any("builtins" in os.path.basename(p) for p in _nvrtc.candidates(12))


def test_explicit_path_comes_first(site, monkeypatch, tmp_path):
    explicit = str(tmp_path / "custom" / "libnvrtc.so.12")
    monkeypatch.setenv("SGPO_RS_NVRTC", explicit)
    found = _nvrtc.candidates(13)
    assert found[0] == explicit
    assert found[1:] == [site["cu13"], site["cu14"], site["cu12"], site["cu11"]]


def test_the_soname_comes_before_fuller_names_of_one_major(tmp_path, monkeypatch):
    monkeypatch.delenv("SGPO_RS_NVRTC", raising=False)
    full = _touch(tmp_path, "nvidia/cuda_nvrtc/lib/libnvrtc.so.12.8.93")
    soname = _touch(tmp_path, "nvidia/cuda_nvrtc/lib/libnvrtc.so.12")
    monkeypatch.setattr(sys, "path", [str(tmp_path), str(tmp_path)])
    assert _nvrtc.candidates(12) == [soname, full]


def test_torch_major_is_none_unless_torch_is_imported(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert _nvrtc.torch_cuda_major() is None
    assert "torch" not in sys.modules, "torch_cuda_major imported torch"


def test_torch_major_comes_from_an_imported_torch(monkeypatch):
    fake = types.SimpleNamespace(version=types.SimpleNamespace(cuda="12.8"))
    monkeypatch.setitem(sys.modules, "torch", fake)
    assert _nvrtc.torch_cuda_major() == 12
    fake.version.cuda = None  # a CPU build of torch
    assert _nvrtc.torch_cuda_major() is None


def test_load_skips_what_does_not_load_and_remembers_no_failure(site, monkeypatch):
    monkeypatch.setattr(_nvrtc, "_HANDLE", None)
    monkeypatch.setattr(_nvrtc, "_PATH", None)
    assert _nvrtc.load() is None  # the fake libraries are empty files
    assert _nvrtc._HANDLE is None and _nvrtc._PATH is None
