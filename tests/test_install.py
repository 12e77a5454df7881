"""The wheel, installed as a user installs it (not editable, outside the checkout), exports and serves.

The package layout maps top-level folders to `llmrec.*` (pyproject.toml); this test is what keeps that
mapping from drifting: a module or data file left out of the wheel fails here, not on a user's machine.
The clean venv sees the project's dependencies through a .pth line to this environment's site-packages
(no download, no second torch); a .pth line adds a folder to sys.path without running the .pth files in
it, so this checkout's editable install stays invisible there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.conftest import write_user_files

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of this working tree, built from a copy: setuptools packs whatever its build/ folder holds,
    so a build in the checkout would still carry modules a changed pyproject.toml leaves out."""
    source, out = tmp_path_factory.mktemp("source") / "llmrec", tmp_path_factory.mktemp("wheel")
    skip = shutil.ignore_patterns(
        ".git", ".venv", "artifacts", "build", "*.egg-info", "__pycache__", ".*_cache"
    )
    shutil.copytree(ROOT, source, ignore=skip)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            out,
            source,
        ],
        check=True,
        cwd=source,
    )
    (found,) = out.glob("llmrec-*.whl")
    return found


def test_the_wheel_holds_every_module_and_data_file_of_the_mapped_folders(wheel):
    """Every .py under a folder that pyproject maps into `llmrec`, and model_repo's configs and models."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    missing = []
    for package, folder in config["package-dir"].items():
        if package != "llmrec" and "." in package.removeprefix("llmrec."):
            continue  # a subpackage of a mapped folder is covered by its parent's walk
        for path in sorted((ROOT / folder).rglob("*")):
            if "__pycache__" in path.parts or not path.is_file():
                continue
            wanted = path.suffix == ".py" or (folder == "model_repo" and path.suffix == ".pbtxt")
            name = "/".join(["llmrec", *([] if package == "llmrec" else [folder_name(package)])])
            name = f"{name}/{path.relative_to(ROOT / folder).as_posix()}"
            if wanted and name not in in_wheel:
                missing.append(name)
    assert not missing, f"pyproject.toml leaves these out of the wheel: {missing}"


def folder_name(package: str) -> str:
    return package.removeprefix("llmrec.").replace(".", "/")


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed (no editable link to this checkout); returns its bin/."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    site = Path(
        subprocess.run(
            [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site / "llmrec_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            venv / "bin" / "python",
            "install",
            "--quiet",
            "--no-deps",
            wheel,
        ],
        check=True,
    )
    return venv / "bin"


def test_an_installed_wheel_exports_and_serves(installed, tiny_runs, tmp_path):
    env = {**os.environ, "LLMREC_ARTIFACTS": str(tmp_path / "artifacts"), "PYTHONPATH": ""}
    where = subprocess.run(
        [
            installed / "python",
            "-c",
            "import llmrec.model_repo as m, llmrec.server as s; print(m.__file__, s.__file__)",
        ],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert all(Path(p).is_relative_to(installed.parent) for p in where), (
        where
    )  # the wheel's copy, not the checkout

    _, items, _ = write_user_files(tmp_path, n_items=40, n_users=30, per_user=12)
    repo = tmp_path / "repo"
    export = subprocess.run(
        [
            installed / "llmrec",
            "export",
            "--repo",
            repo,
            "--notellm-dir",
            tiny_runs["notellm"],
            "--ranker-dir",
            tiny_runs["eaar"],
            "--items",
            items,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert export.returncode == 0, export.stdout + export.stderr
    assert (repo / "similar_core" / "configs" / "gpu.pbtxt").is_file()

    serve = """
import json, sys
from llmrec.server.client import RankingClient
from llmrec.server.launcher import TritonServer
with TritonServer(sys.argv[1]) as server:
    client = RankingClient(server.grpc_url)
    print(json.dumps({
        "similar": [n.item_id for n in client.similar(item_id="3", k=4)],
        "rank": len(client.rank(["Movie 1", "Movie 2"], ["Movie 3", "Movie 4", "Movie 5"])),
        "embed": len(client.embed(["Movie 7"])[0]),
    }))
"""
    served = subprocess.run(
        [installed / "python", "-c", serve, repo], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert served.returncode == 0, served.stdout + served.stderr[-3000:]
    answer = json.loads(served.stdout.strip().splitlines()[-1])
    assert len(answer["similar"]) == 4 and "3" not in answer["similar"]
    assert answer["rank"] == 3 and answer["embed"] == 16
