"""Artifacts: the contract between stages.

An artifact is a folder holding a stage's files and a `manifest.json` written last, atomically (temp
name, fsync, rename). A folder without a manifest is unfinished and is never read as finished.

An artifact's id is a hash of its stage kind, its resolved config and its inputs' ids, so the same
stage with the same inputs is a cache hit. The manifest also records each input's content hash: if an
input was rebuilt with different content, the artifacts made from it are stale and are rebuilt too.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
_UMASK = os.umask(0)
os.umask(_UMASK)
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Artifact:
    """A finished artifact: its folder and its manifest."""

    path: Path
    manifest: dict[str, Any]

    @property
    def id(self) -> str:
        return self.manifest["id"]

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def content_hash(self) -> str:
        return self.manifest["content_hash"]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.manifest.get("metrics", {})


def read_artifact(path: Path) -> Artifact | None:
    """The finished artifact in `path`, or None when the folder is missing or unfinished (no manifest)."""
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # a torn manifest cannot happen with atomic writes; treat anything unreadable as unfinished
    if manifest.get("schema_version") != SCHEMA_VERSION:
        return None
    return Artifact(path=path, manifest=manifest)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def artifact_id(kind: str, config: Any, input_ids: dict[str, str]) -> str:
    """Hash of what determines an artifact: its stage kind, resolved config and inputs' ids."""
    payload = canonical_json({"kind": kind, "config": config, "inputs": input_ids, "schema": SCHEMA_VERSION})
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def content_hash(path: Path) -> str:
    """sha256 over every file in the folder (relative path + bytes), the manifest excluded."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.name != MANIFEST_NAME):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def atomic_write_text(path: Path, text: str) -> None:
    """Write under a temporary name in the same folder, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp_name, 0o666 & ~_UMASK)  # mkstemp makes files private; these are meant to be read by others
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def fsync_directory(folder: Path) -> None:
    """Flush a folder's entries (names created, renamed or removed in it) to disk."""
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def fsync_tree(folder: Path) -> None:
    """Flush every file under `folder`, and the folders themselves, to disk: before a rename makes it final, so a
    power cut or a lost machine cannot leave a complete-looking folder of empty or partial files."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with path.open("rb") as file:
                os.fsync(file.fileno())
    for path in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        fsync_directory(path)


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("dapt-lm", "torch", "transformers", "accelerate", "tokenizers", "pyarrow", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def write_manifest(
    path: Path,
    *,
    kind: str,
    name: str,
    id: str,
    config: Any,
    inputs: dict[str, Artifact],
    metrics: dict[str, Any],
    timings: dict[str, Any],
) -> Artifact:
    """Finish an artifact: hash its files, then write the manifest last and atomically."""
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "name": name,
        "id": id,
        "content_hash": content_hash(path),
        "config": config,
        "inputs": {
            role: {"name": a.manifest["name"], "kind": a.kind, "id": a.id, "content_hash": a.content_hash}
            for role, a in inputs.items()
        },
        "metrics": metrics,
        "timings": timings,
        "versions": library_versions(),
        "command": sys.argv,
    }
    atomic_write_text(path / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n")
    return Artifact(path=path, manifest=manifest)
