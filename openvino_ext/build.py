"""Build the nncf_moe3 CPU extension (``openvino_ext/cpu``) with CMake against the installed OpenVINO wheel.

The build is cached per OpenVINO version and source hash: ``openvino_ext/cpu/build/<ov-version>/`` when that folder
is writable, else ``~/.cache/nncf_moe3/<ov-version>/`` (override with env ``NNCF_MOE3_BUILD_DIR``). A source change
triggers a rebuild; concurrent builders serialise on a file lock.

    python -m openvino_ext.build [--force] [-v]      # prints the library path
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

SRC_DIR = Path(__file__).resolve().parent / "cpu"
LIB_NAME = "libnncf_moe3_cpu.so"
_SOURCE_SUFFIXES = {".cpp", ".hpp", ".inc", ".txt"}


class BuildError(RuntimeError):
    """The extension could not be built (missing tool or compiler error)."""


def _ov():
    import openvino as ov

    return ov


def openvino_cmake_dir() -> Path:
    d = Path(_ov().__file__).resolve().parent / "cmake"
    if not (d / "OpenVINOConfig.cmake").is_file():
        raise BuildError(f"OpenVINO CMake config not found in {d}; the openvino wheel ships it (pip install openvino)")
    return d


def _version_tag() -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", _ov().__version__)


def source_hash() -> str:
    h = hashlib.sha256()
    for p in sorted(SRC_DIR.rglob("*")):
        if p.is_file() and p.suffix in _SOURCE_SUFFIXES and "build" not in p.relative_to(SRC_DIR).parts:
            h.update(str(p.relative_to(SRC_DIR)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _writable(d: Path) -> bool:
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / ".probe"
        probe.write_text("")
        probe.unlink()
        return True
    except OSError:
        return False


def build_dir() -> Path:
    env = os.environ.get("NNCF_MOE3_BUILD_DIR")
    if env:
        return Path(env) / _version_tag()
    local = SRC_DIR / "build" / _version_tag()
    if _writable(local):
        return local
    return Path.home() / ".cache" / "nncf_moe3" / _version_tag()


def _find_compiler() -> str | None:
    for c in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if c and shutil.which(c):
            return shutil.which(c)
    return None


def build(force: bool = False, verbose: bool = False) -> Path:
    """Configure + build if needed; return the path of the extension library."""
    out = build_dir()
    out.mkdir(parents=True, exist_ok=True)
    lib = out / LIB_NAME
    stamp = out / "source.hash"
    want = source_hash()
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and lib.is_file() and stamp.is_file() and stamp.read_text() == want:
            return lib
        cmake = shutil.which("cmake")
        if cmake is None:
            raise BuildError("cmake not found on PATH: install CMake >= 3.16 (apt-get install cmake / pip install cmake) "
                             "to build the nncf_moe3 CPU extension")
        cxx = _find_compiler()
        if cxx is None:
            raise BuildError("no C++ compiler found (tried $CXX, c++, g++, clang++): install g++ >= 9 "
                             "(apt-get install g++) to build the nncf_moe3 CPU extension")
        cfg = [cmake, "-S", str(SRC_DIR), "-B", str(out), f"-DOpenVINO_DIR={openvino_cmake_dir()}",
               "-DCMAKE_BUILD_TYPE=Release", f"-DCMAKE_CXX_COMPILER={cxx}",
               f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out}"]
        jobs = str(max(1, min(4, os.cpu_count() or 1)))
        for cmd in (cfg, [cmake, "--build", str(out), "-j", jobs]):
            res = subprocess.run(cmd, capture_output=not verbose, text=True)
            if res.returncode != 0:
                log = "" if verbose else (res.stdout or "")[-4000:] + (res.stderr or "")[-4000:]
                raise BuildError(f"building the nncf_moe3 CPU extension failed: {' '.join(cmd)}\n{log}")
        if not lib.is_file():
            raise BuildError(f"build finished but {lib} is missing")
        stamp.write_text(want)
        return lib


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="rebuild even if the cached library is up to date")
    ap.add_argument("-v", "--verbose", action="store_true", help="show CMake / compiler output")
    args = ap.parse_args(argv)
    try:
        print(build(force=args.force, verbose=args.verbose))
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
