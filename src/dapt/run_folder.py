"""The run folder: where each artifact lives, what dapt may write or delete there, and who is writing to it.

    runs/<name>/
      .lock                          held (an OS advisory lock) by the one dapt process writing here
      .artifacts/<stage>-<id>/       every artifact built here, one folder per id: a finished one is never
                                     modified, and no run deletes it (only `dapt gc`, when nothing refers to it)
      <stage> -> .artifacts/<stage>-<id>   the stage's current artifact (a relative symlink), so that
                                     `runs/<name>/pretrain/model` loads by path
      pipeline.yaml, adapted.json, report.*

A re-run with a changed config builds the stage under its new id and points `<stage>` at it; the earlier
artifact stays in `.artifacts/`, loadable by its path, with the variants built on it. Going back to the earlier
config is a cache hit on it. A run folder written before this layout holds the artifacts themselves under the
stage names: they are used where they are, and set aside into `.artifacts/` when replaced.

Path rules: every path dapt writes or deletes is checked by `inside` to lie in the run folder. dapt deletes only
what it made: an unfinished artifact is a folder holding the `.attempt` file the runner writes before a stage
starts; a folder under a stage's name without it (or a manifest) is someone else's, and stops the run.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dapt.artifacts import MANIFEST_NAME, Artifact, read_artifact
from dapt.errors import ConfigError

STORE_NAME = ".artifacts"  # the folder of every artifact by id
ATTEMPT_NAME = ".attempt"  # the stage attempt that owns an unfinished folder: its id, config and inputs' ids
LOCK_NAME = ".lock"
ADAPTED_NAME = "adapted.json"  # the tasks `dapt adapt` branched into a run folder (dapt.adapt_command)


def absolute(path: Path) -> Path:
    """`path` made absolute with its folder resolved, but not itself: a symlink stays the link."""
    path = Path(path)
    return Path(os.path.normpath(path.parent.resolve() / path.name))


def inside(run_dir: Path, path: Path) -> Path:
    """`path`, after checking that it lies inside `run_dir` (the entry itself: a link is not followed), else a
    ConfigError. Every path the runner writes or deletes goes through here."""
    root, where = Path(run_dir).resolve(), absolute(path)
    if root not in where.parents:
        raise ConfigError(
            f"{path}: outside the run folder {root}; dapt writes and deletes only inside it (does a name in the "
            "config hold '/' or '..'?)"
        )
    return path


def store_path(run_dir: Path, name: str, artifact_id: str) -> Path:
    """Where the artifact `artifact_id` of stage `name` lives: .artifacts/<name>-<id>."""
    return inside(run_dir, Path(run_dir) / STORE_NAME / f"{name}-{artifact_id}")


def run_folder_of(path: Path) -> Path:
    """The run folder an artifact folder belongs to (its stage link's folder, or the one above .artifacts/)."""
    parent = absolute(path).parent
    return parent.parent if parent.name == STORE_NAME else parent


def read_attempt(folder: Path) -> dict[str, Any] | None:
    """The attempt that owns an unfinished folder (id, config, inputs' ids), or None when there is none."""
    path = folder / ATTEMPT_NAME
    if not path.is_file():
        return None
    text = path.read_text().strip()
    try:
        return dict(json.loads(text))
    except (json.JSONDecodeError, TypeError, ValueError):
        return {"id": text}  # written by an older dapt: the id alone


def recorded_id(folder: Path) -> str | None:
    """The id of the artifact a folder holds, finished (manifest) or not (attempt); None when dapt did not make it."""
    artifact = read_artifact(folder)
    if artifact is not None:
        return artifact.id
    attempt = read_attempt(folder)
    return attempt["id"] if attempt else None


def _ours(folder: Path) -> bool:
    """Did dapt make this folder? A manifest (finished) or an attempt marker (unfinished) says so."""
    return (folder / MANIFEST_NAME).is_file() or (folder / ATTEMPT_NAME).is_file()


def _is_our_link(link: Path) -> bool:
    """A symlink the runner made: it points at .artifacts/<its name>-..., relatively."""
    target = os.readlink(link)
    return Path(target).parent == Path(STORE_NAME) and Path(target).name.startswith(f"{link.name}-")


def stage_entry(run_dir: Path, name: str) -> str:
    """What the stage-named path holds: 'missing', 'link' (ours, maybe dangling) or 'folder' (an artifact of an
    older layout, or a copy that followed the links); anything else stops the run, as dapt did not make it."""
    link = inside(run_dir, Path(run_dir) / name)
    if link.is_symlink():
        if _is_our_link(link):
            return "link"
        raise ConfigError(
            f"{link}: a symlink to {os.readlink(link)} that dapt did not make; dapt would replace it with its own "
            f"link to the stage's artifact. Move it away (or give another --out)."
        )
    if not link.exists():
        return "missing"
    if link.is_dir() and _ours(link):
        return "folder"
    what = "a folder" if link.is_dir() else "a file"
    raise ConfigError(
        f"{link}: {what} that dapt did not make (no {MANIFEST_NAME}, no {ATTEMPT_NAME} marker) where stage "
        f"{name!r} keeps its artifact; dapt deletes only what it made. Move it away, or give another --out."
    )


def stage_folder(run_dir: Path, name: str, artifact_id: str) -> Path:
    """The folder of stage `name`'s artifact `artifact_id`: the stage-named folder itself when it holds that id
    (an older layout, or a copy of a run folder), else .artifacts/<name>-<id>."""
    link = Path(run_dir) / name
    if stage_entry(run_dir, name) == "folder" and recorded_id(link) == artifact_id:
        return link
    return store_path(run_dir, name, artifact_id)


def make_current(run_dir: Path, name: str, folder: Path) -> Path | None:
    """Point stage `name` at `folder` (a store folder; the stage-named folder itself needs nothing). An older
    layout's folder there is set aside into .artifacts/ first. Returns where the artifact it pointed at before
    is now (None when nothing changed, or it pointed at nothing)."""
    link = inside(run_dir, Path(run_dir) / name)
    if absolute(folder) == absolute(link):
        return None
    entry = stage_entry(run_dir, name)
    previous = None
    if entry == "link":
        previous = absolute(absolute(link).parent / os.readlink(link))
        if previous == absolute(folder):
            return None
    elif entry == "folder":
        previous = set_aside(run_dir, link, f"{name}-{recorded_id(link)}")
    temporary = inside(run_dir, link.with_name(f".{name}.{os.getpid()}.link"))
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(Path(STORE_NAME) / folder.name, target_is_directory=True)
    os.replace(temporary, link)  # atomic: the name points at the old artifact or the new, never at nothing
    return previous if previous is not None and (previous.exists() or previous.is_symlink()) else None


def set_aside(run_dir: Path, folder: Path, stem: str) -> Path:
    """Move an artifact folder of ours into .artifacts/ under `stem` (with ~N when taken); return where."""
    store = inside(run_dir, Path(run_dir) / STORE_NAME)
    store.mkdir(exist_ok=True)
    target = store / stem
    number = 0
    while target.exists() or target.is_symlink():
        number += 1
        target = store / f"{stem}~{number}"
    os.replace(inside(run_dir, folder), inside(run_dir, target))
    return target


def remove(run_dir: Path, folder: Path) -> None:
    """Delete a folder dapt made (it holds a manifest or an attempt marker) inside the run folder."""
    inside(run_dir, folder)
    if folder.is_symlink() or not _ours(folder):
        raise ConfigError(f"{folder}: not a folder dapt made (no {MANIFEST_NAME}, no {ATTEMPT_NAME}); left alone")
    shutil.rmtree(folder)


def locate(run_dir: Path, name: str, artifact_id: str) -> Artifact | None:
    """The finished artifact `artifact_id` of stage `name` in a run folder: under the stage's name when it is the
    current one there, else in .artifacts/; None when it is in neither."""
    for folder in (Path(run_dir) / name, Path(run_dir) / STORE_NAME / f"{name}-{artifact_id}"):
        artifact = read_artifact(folder)
        if artifact is not None and artifact.id == artifact_id and artifact.manifest["name"] == name:
            return artifact
    return None


@dataclass(frozen=True)
class Found:
    """A finished artifact of a run folder, and whether a stage name points at it (else: an earlier build)."""

    artifact: Artifact
    current: bool


def current_entries(run_dir: Path) -> list[Path]:
    """The stage-named entries of a run folder that dapt made (links to .artifacts/, folders with a manifest or an
    attempt marker), in name order. Stray files and folders are left out."""
    entries = []
    for entry in sorted(Path(run_dir).iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_symlink() and _is_our_link(entry):
            entries.append(entry)
        elif not entry.is_symlink() and entry.is_dir() and _ours(entry):
            entries.append(entry)
    return entries


def run_artifacts(run_dir: Path) -> list[Found]:
    """Every finished artifact of a run folder: the current ones (by stage name, in name order), then the earlier
    builds kept in .artifacts/."""
    found, seen = [], set()
    for entry in current_entries(run_dir):
        artifact = read_artifact(entry)
        if artifact is not None:
            found.append(Found(artifact, True))
            seen.add(entry.resolve())
    store = Path(run_dir) / STORE_NAME
    for folder in sorted(store.iterdir()) if store.is_dir() else []:
        artifact = read_artifact(folder) if folder.is_dir() and folder.resolve() not in seen else None
        if artifact is not None:
            found.append(Found(artifact, False))
    return found


# ---------------------------------------------------------------------------------------------------------
# the lock


def holder(run_dir: Path) -> str:
    """Who holds (or last held) the run folder's lock, as recorded in it: 'PID 123, `dapt run x.yaml`, since ...'."""
    try:
        record = json.loads((Path(run_dir) / LOCK_NAME).read_text())
        return f"PID {record['pid']}, `{record['command']}`, since {record['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not said which yet"


def writable_folder(folder: Path, what: str) -> Path:
    """`folder`, created if need be; a ConfigError naming `what` (e.g. '--out') when it is a file or cannot be
    written."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{what} {folder}: a file, not a folder; give a folder (a new one, or a run folder)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    except OSError as error:
        raise ConfigError(
            f"{what} {folder}: cannot write there ({error.strerror or error}); give a folder you can write to"
        ) from None
    return folder


@contextmanager
def locked(run_dir: Path, what: str = "--out") -> Iterator[Path]:
    """Hold the run folder's lock (flock on .lock; the OS releases it when the process ends, however it ends, so
    a killed run never blocks the next one). A second process stops at once with a ConfigError naming the holder.
    The folder is created first, and a file there, or a folder dapt cannot write, is a ConfigError naming `what`.

    Launched over several processes, only the main one takes it (the caller's choice): the others write nothing
    there on their own.
    """
    run_dir = writable_folder(run_dir, what)
    path = inside(run_dir, run_dir / LOCK_NAME)
    try:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise ConfigError(
            f"{what} {run_dir}: cannot write there ({error.strerror}); give a folder you can write to"
        ) from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"{run_dir} is in use by another dapt process ({holder(run_dir)}); a run folder is written by one "
                f"process at a time. Wait for it to finish (or stop it: it resumes later), or give another --out"
            ) from None
        record = {
            "pid": os.getpid(),
            "command": " ".join(["dapt", *sys.argv[1:]]),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(handle, 0)
        os.write(handle, (json.dumps(record) + "\n").encode())
        yield run_dir
    finally:
        os.close(handle)  # releases the lock; the file stays (deleting it would race with the next taker)


# ---------------------------------------------------------------------------------------------------------
# dapt gc


@dataclass(frozen=True)
class Garbage:
    """An artifact folder in .artifacts/ that nothing refers to."""

    folder: Path
    name: str
    id: str
    finished: bool
    size: int


def _size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


def _branched_bases(run_dir: Path) -> list[Path]:
    """The folders of this run's bases that tasks branched with `dapt adapt` start from, by the ids recorded in
    adapted.json of this run folder and of its neighbours (a task may be branched into another run folder)."""
    root = Path(run_dir).resolve()
    folders = []
    for record in [root / ADAPTED_NAME, *sorted(root.parent.glob(f"*/{ADAPTED_NAME}"))]:
        try:
            entries = json.loads(record.read_text())["adapted"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        for base in (entry.get(key) or {} for entry in entries for key in ("dapt_base", "original_base")):
            if "path" in base and run_folder_of(Path(base["path"])).resolve() == root:
                found = locate(root, base["name"], base["id"])
                if found is not None:
                    folders.append(found.path)
    return folders


def referenced(run_dir: Path) -> set[Path]:
    """The folders (resolved) of every artifact a current stage or a branched task needs: the current ones, and,
    from their manifests, the inputs they were built from, and theirs, and so on."""
    run_dir = Path(run_dir)
    pending = [entry.resolve() for entry in current_entries(run_dir)]
    pending += [folder.resolve() for folder in _branched_bases(run_dir)]
    kept: set[Path] = set()
    while pending:
        folder = pending.pop()
        if folder in kept:
            continue
        kept.add(folder)
        artifact = read_artifact(folder)
        if artifact is None or run_folder_of(folder).resolve() != run_dir.resolve():
            continue  # unfinished (names no inputs yet), or another run folder's: its own gc keeps what it needs
        for recorded in artifact.manifest["inputs"].values():
            parent = locate(run_dir, recorded["name"], recorded["id"])
            if parent is not None:
                pending.append(parent.path.resolve())
    return kept


def garbage(run_dir: Path) -> tuple[list[Garbage], list[Path]]:
    """The artifact folders in .artifacts/ that nothing refers to, and the entries there dapt did not make (left
    alone)."""
    store = Path(run_dir) / STORE_NAME
    if not store.is_dir():
        return [], []
    kept = referenced(run_dir)
    unused, strangers = [], []
    for folder in sorted(store.iterdir()):
        if folder.resolve() in kept:
            continue
        if folder.is_symlink() or not folder.is_dir() or not _ours(folder):
            strangers.append(folder)
            continue
        artifact = read_artifact(folder)
        attempt = read_attempt(folder) or {}
        if artifact is not None:
            unused.append(Garbage(folder, artifact.manifest["name"], artifact.id, True, _size(folder)))
        else:
            name = folder.name.rsplit("-", 1)[0]
            unused.append(Garbage(folder, name, attempt.get("id", "?"), False, _size(folder)))
    return unused, strangers


def collect_garbage(run_dir: Path, *, dry_run: bool = False) -> list[Garbage]:
    """Delete (unless `dry_run`) the artifacts nothing refers to; print what is freed. Takes the run's lock."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run folder {str(run_dir)!r} not found (looked in {run_dir.resolve()})")
    with locked(run_dir, "run folder"):
        unused, strangers = garbage(run_dir)
        verb = "would free" if dry_run else "freed"
        for item in unused:
            state = "finished" if item.finished else "unfinished"
            print(f"{item.folder}  {item.name} [{item.id}], {state}, {item.size / 1e6:.1f} MB")
            if not dry_run:
                remove(run_dir, item.folder)
        total = sum(item.size for item in unused)
        print(f"dapt gc: {verb} {total / 1e6:.1f} MB in {len(unused)} artifact(s) of {run_dir}")
        for stranger in strangers:
            print(f"  left alone: {stranger} (dapt did not make it)", file=sys.stderr)
    return unused
