"""Published model versions: what export seals and what a server trusts at start.

    <repo>/<model>/<version>/manifest.json   {"model", "version", "files": {relative path: {bytes, sha256}}}

Export writes every file of a version into a hidden folder, checks it (parity, index against embed), then
writes the manifest last and renames the folder into place. At start, the launcher serves the newest
version of each model whose files still match its manifest and whose load succeeds, and reports every
newer version it skipped and why, so one broken publish never stops a restart from serving the last good
version. A version without a manifest (a hand-made repository) is tried as is: its load decides.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

MANIFEST = "manifest.json"
CHUNK = 1 << 20


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            sha.update(block)
    return sha.hexdigest()


def seal(folder: Path, model: str, version: int) -> Path:
    """Write <folder>/manifest.json over every file below it (the manifest last)."""
    folder = Path(folder)
    files = {
        str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": _digest(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST and "__pycache__" not in p.parts
    }
    path = folder / MANIFEST
    path.write_text(json.dumps({"model": model, "version": version, "files": files}, indent=1))
    return path


def problem(folder: Path) -> str | None:
    """Why a sealed version folder cannot be trusted (a missing, changed or extra-small file, or a broken
    manifest); None when its files match the manifest or it has none."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.exists():
        return None
    try:
        files = json.loads(path.read_text())["files"]
        if not isinstance(files, dict):
            raise TypeError("'files' is not an object")
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{path} is unreadable: {e}"
    for name, want in files.items():
        file = folder / name
        if not file.is_file():
            return f"{file} is missing"
        size = file.stat().st_size
        if size != want.get("bytes"):
            return f"{file} has {size} bytes, the manifest says {want.get('bytes')} (truncated or replaced)"
        if _digest(file) != want.get("sha256"):
            return f"{file} does not match its checksum in the manifest (changed after export)"
    return None


def versions(model_dir: Path) -> list[int]:
    """The numbered version folders of a model, newest first (what Triton would consider)."""
    found = [p for p in Path(model_dir).iterdir() if p.is_dir() and p.name.isdigit() and p.name[0] != "0"]
    return sorted((int(p.name) for p in found), reverse=True)
