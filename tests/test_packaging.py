"""Packaging: a light ``import energyloss``, the version from metadata, and wheel / sdist that install and import."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

import energyloss

ROOT = Path(__file__).resolve().parents[1]

#: Optional dependencies (extras) and heavy packages that ``import energyloss`` must not import.
HEAVY = ("scipy", "rdkit", "matplotlib", "triton", "numba", "networkx", "pymatching", "pandas", "sklearn")


def _run(code: str, *, python: str = sys.executable, cwd: Path | None = None, env=None) -> str:
    out = subprocess.run(
        [python, "-c", code], capture_output=True, text=True, timeout=120, cwd=cwd, env=env, check=False
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def _project_version() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    return re.search(r'^version = "([^"]+)"', text, re.MULTILINE).group(1)


def test_import_is_light():
    """After ``import torch, numpy``, ``import energyloss`` adds only its own modules and the standard library."""
    code = (
        "import sys, time\n"
        "import torch, numpy\n"
        "before = set(sys.modules)\n"
        "t = time.perf_counter()\n"
        "import energyloss as el\n"
        "dt = time.perf_counter() - t\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(sorted(m for m in new if m != 'energyloss' and m not in sys.stdlib_module_names))\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n"
        "print(el.nn.PairEnergyLoss.__name__, round(dt, 3))\n"
    )
    third_party, heavy, last = _run(code).splitlines()
    assert third_party == "[]", f"import energyloss pulled in {third_party}"
    assert heavy == "[]", f"import energyloss pulled in {heavy}"
    assert last.startswith("PairEnergyLoss ")


def test_version_comes_from_the_package_metadata():
    assert energyloss.__version__ == importlib.metadata.version("energyloss") == _project_version()
    # a source tree that is not installed: no metadata, a placeholder version instead of an ImportError
    code = (
        "import importlib.metadata as m\n"
        "def missing(name):\n"
        "    raise m.PackageNotFoundError(name)\n"
        "m.version = missing\n"
        "import energyloss\n"
        "print(energyloss.__version__)\n"
    )
    assert _run(code) == "0+unknown"


def test_py_typed_and_license_are_in_the_tree():
    assert (ROOT / "src" / "energyloss" / "py.typed").is_file()
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert 'license = "MIT"' in (ROOT / "pyproject.toml").read_text()


def _copy_project(dest: Path) -> Path:
    """The files a build reads, without caches, egg-info or the virtual environment."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "MANIFEST.in"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    return dest


def _fresh_venv(path: Path) -> str:
    """A new virtual environment that sees this interpreter's site-packages (torch, numpy) but not its energyloss.

    Directories listed in a ``.pth`` file are added to ``sys.path`` without processing their own ``.pth``
    files, so the editable install of this checkout stays invisible there.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    python = str(path / ("Scripts" if os.name == "nt" else "bin") / "python")
    site = _run("import sysconfig; print(sysconfig.get_paths()['purelib'])", python=python)
    outer = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "_outer_site_packages.pth").write_text("\n".join(sorted(outer)) + "\n")
    return python


_SMOKE = (
    "import importlib.metadata, pathlib, sys, torch\n"
    "import energyloss as el\n"
    "assert pathlib.Path(el.__file__).resolve().is_relative_to(pathlib.Path(sys.prefix).resolve()), el.__file__\n"
    "assert (pathlib.Path(el.__file__).parent / 'py.typed').is_file()\n"
    "assert el.__version__ == importlib.metadata.version('energyloss'), el.__version__\n"
    "y = torch.randn(2, 5, 3)\n"
    "assert float(el.nn.PairEnergyLoss(coefficients='exp')(y, y)) == 0.0\n"
    "import energyloss.testing, energyloss.diffusion, energyloss.spins\n"
    "print(el.__version__)\n"
)


@pytest.mark.slow
def test_wheel_and_sdist_build_install_and_import(tmp_path):
    """``python -m build`` (sdist, then the wheel from the sdist) and an install of each in a fresh venv."""
    pytest.importorskip("build")
    src = _copy_project(tmp_path / "project")
    dist = tmp_path / "dist"
    out = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    version = _project_version()
    (wheel,) = dist.glob(f"energyloss-{version}-py3-none-any.whl")
    (sdist,) = dist.glob(f"energyloss-{version}.tar.gz")

    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert "energyloss/py.typed" in names
    assert f"energyloss-{version}.dist-info/licenses/LICENSE" in names
    assert not any("__pycache__" in n or n.startswith("tests/") for n in names)
    with tarfile.open(sdist) as tf:
        members = {m.name.split("/", 1)[1] for m in tf.getmembers() if "/" in m.name}
    assert {"LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml", "src/energyloss/py.typed"} <= members

    for name, artefact, extra in (("wheel", wheel, []), ("sdist", sdist, ["--no-build-isolation"])):
        python = _fresh_venv(tmp_path / f"venv-{name}")
        install = subprocess.run(
            [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", *extra, artefact],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
        assert _run(_SMOKE, python=python, cwd=tmp_path) == version
