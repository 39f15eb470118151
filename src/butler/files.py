"""Copying, moving and deleting files and creating folders for load scripts, inside approved folders only.

Upstream Butler decides by comparing path strings, which symlinks and odd spellings get around. Here a
path is approved by where it really is: the folder it names is resolved on disk (symlinks followed) and
must lie inside a resolved approved folder. Paths that only make sense as tricks (NUL bytes, percent-encoded
dots and slashes, Windows drive forms on other systems, relative paths, over-long paths) are refused
before anything is looked at, and approval is decided before existence, so the answers reveal nothing
about files outside the approved folders.

File work runs in threads, never on the event loop. A copy is written to a temporary name in the target
folder and renamed into place, so no reader sees half a file; a move within one file system is a rename,
and across file systems a copy (synced and size-checked) followed by deleting the source, so the source
is never lost when a step fails.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import re
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

MAX_PATH = 4096
_UNC = re.compile(r"^[\\/]{2,}[^\\/]+[\\/]+[^\\/]+")
_DRIVE = re.compile(r"^[A-Za-z]:")
_ENCODED = re.compile(r"%(2e|2f|5c|00)", re.IGNORECASE)
WINDOWS = sys.platform == "win32"


class FileRequestError(ValueError):
    """The request cannot be carried out as asked (400); the message says why."""


class FileAccessDenied(Exception):
    """The path is not inside an approved folder, or is a form that is never approved (403)."""


@dataclass(frozen=True)
class FileSettings:
    """The approved folders (``Butler.fileCopyApprovedDirectories`` and friends, ``configDirectories``)."""

    copy: tuple[tuple[Path, Path], ...] = ()
    move: tuple[tuple[Path, Path], ...] = ()
    delete: tuple[Path, ...] = ()
    qvd_path: Path | None = None
    #: ``Butler.createDirApprovedDirectories`` (an addition): None leaves createdir unrestricted, as upstream.
    create_dir: tuple[Path, ...] | None = None


def normalize(raw: str) -> str:
    """Upstream's spelling of a path: backslashes as slashes, ``.`` and ``..`` resolved lexically."""
    text = raw.replace("\\", "/")
    if not text:
        return "."
    return posixpath.normpath(text) if not text.startswith("//") else "/" + posixpath.normpath(text)


def _screen(raw: str, kind: str) -> str:
    """Refuse the path forms that are never approved; return the normalized path."""
    if "\x00" in raw:
        raise FileRequestError(f"{kind} contains a NUL byte")
    if len(raw) > MAX_PATH:
        raise FileRequestError(f"{kind} is longer than {MAX_PATH} characters")
    if not WINDOWS and _UNC.match(raw):
        raise FileRequestError(
            f"UNC paths not supported for file {kind} operations when running Butler on non-Windows OS. "
            f"Path: {raw}"
        )
    if not WINDOWS and _DRIVE.match(raw):
        raise FileAccessDenied(f"{raw}: Windows drive paths cannot be approved on this system")
    if _ENCODED.search(raw):
        raise FileAccessDenied(f"{raw}: percent-encoded path characters are not accepted")
    path = normalize(raw)
    if not posixpath.isabs(path):
        raise FileAccessDenied(f"{raw}: only absolute paths can be approved")
    return path


def _real(path: str) -> str:
    return os.path.realpath(path)


def _inside(path: str, folder: Path) -> bool:
    real_folder = _real(str(folder))
    try:
        return os.path.commonpath([path, real_folder]) == real_folder
    except ValueError:
        return False


@dataclass
class FileService:
    settings: FileSettings

    # -- approval -------------------------------------------------------------------------------------

    def _approved_pair(
        self, source: str, target: str, pairs: tuple[tuple[Path, Path], ...], verb: str
    ) -> None:
        # The source itself is resolved (a symlink to elsewhere is judged by where it points); the target's
        # folder is resolved (the target is replaced, never written through).
        real_source = _real(source)
        real_target_dir = _real(posixpath.dirname(target))
        for from_dir, to_dir in pairs:
            if _inside(posixpath.dirname(real_source), from_dir) and _inside(real_target_dir, to_dir):
                return
        raise FileAccessDenied(f"No approved fromDir/toDir for file {verb}")

    # -- operations: each runs in a thread, checks included (they touch the disk too) ---------------------

    async def copy(
        self, from_file: str, to_file: str, overwrite: bool, preserve_timestamp: bool
    ) -> tuple[str, str]:
        return await asyncio.to_thread(self._copy, from_file, to_file, overwrite, preserve_timestamp)

    async def move(self, from_file: str, to_file: str, overwrite: bool) -> tuple[str, str]:
        return await asyncio.to_thread(self._move, from_file, to_file, overwrite)

    async def delete(self, delete_file: str) -> None:
        await asyncio.to_thread(self._delete, delete_file)

    async def create_dir(self, directory: str) -> None:
        await asyncio.to_thread(self._create_dir, directory)

    async def create_qvd_dir(self, directory: str) -> None:
        await asyncio.to_thread(self._create_qvd_dir, directory)

    def _copy(
        self, from_file: str, to_file: str, overwrite: bool, preserve_timestamp: bool
    ) -> tuple[str, str]:
        source, target = _screen(from_file, "copy"), _screen(to_file, "copy")
        self._approved_pair(source, target, self.settings.copy, "copy")
        if not os.path.lexists(source):
            raise FileRequestError("fromFile does not exist")
        _copy(source, target, overwrite, preserve_timestamp)
        return source, target

    def _move(self, from_file: str, to_file: str, overwrite: bool) -> tuple[str, str]:
        source, target = _screen(from_file, "move"), _screen(to_file, "move")
        self._approved_pair(source, target, self.settings.move, "move")
        if not os.path.lexists(source):
            raise FileRequestError("fromFile does not exist")
        if os.path.lexists(target) and not overwrite:
            raise FileRequestError("toFile exists and overwrite is false")
        _move(source, target)
        return source, target

    def _delete(self, delete_file: str) -> None:
        path = _screen(delete_file, "copy")  # upstream's message says "copy" here too
        real_parent = _real(posixpath.dirname(path))
        if not any(_inside(real_parent, folder) for folder in self.settings.delete):
            raise FileAccessDenied("No approved directory for file delete")
        if not os.path.lexists(path):
            raise FileRequestError("Delete failed, file does not exist")
        _remove(path)

    def _create_dir(self, directory: str) -> None:
        allowed = self.settings.create_dir
        if allowed is None:
            path = directory if directory else "."
        else:
            path = _screen(directory, "create")
            if not any(_inside(_real(path), folder) for folder in allowed):
                raise FileAccessDenied(
                    "Directory must be within an approved folder (createDirApprovedDirectories)"
                )
        os.makedirs(path, exist_ok=True)

    def _create_qvd_dir(self, directory: str) -> None:
        qvd = self.settings.qvd_path
        if qvd is None:
            raise FileRequestError("No QVD folder is configured (Butler.configDirectories.qvdPath)")
        if "\x00" in directory or len(directory) > MAX_PATH or _ENCODED.search(directory):
            raise FileAccessDenied("Directory must be within the QVD folder")
        # Upstream joins the two, so an absolute directory lands under the QVD folder as well.
        joined = normalize(str(qvd) + "/" + directory.replace("\\", "/").lstrip("/"))
        if not _inside(_real(joined), qvd):
            raise FileAccessDenied("Directory must be within the QVD folder")
        os.makedirs(joined, exist_ok=True)


def _temporary(target: str) -> str:
    return os.path.join(
        os.path.dirname(target), f".{os.path.basename(target)}.butler-{uuid.uuid4().hex[:8]}.part"
    )


def _copy(source: str, target: str, overwrite: bool, preserve_timestamp: bool) -> None:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.lexists(target) and not overwrite:
        return  # upstream: an existing target without overwrite is left alone, and the call succeeds
    temporary = _temporary(target)
    try:
        if os.path.isdir(source):
            shutil.copytree(
                source, temporary, copy_function=shutil.copy2 if preserve_timestamp else shutil.copy
            )
        else:
            (shutil.copy2 if preserve_timestamp else shutil.copyfile)(source, temporary)
            _fsync(temporary)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        os.replace(temporary, target)
    finally:
        if os.path.lexists(temporary):
            _remove(temporary)


def _move(source: str, target: str) -> None:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        os.replace(source, target)
        return
    except OSError as exc:
        if exc.errno != 18:  # EXDEV: another file system; copy, check, then delete below
            raise
    temporary = _temporary(target)
    try:
        if os.path.isdir(source):
            shutil.copytree(source, temporary, copy_function=shutil.copy2)
        else:
            shutil.copy2(source, temporary)
            _fsync(temporary)
            if os.path.getsize(temporary) != os.path.getsize(source):
                raise OSError(f"copy of {source} is incomplete")
        os.replace(temporary, target)
    finally:
        if os.path.lexists(temporary):
            _remove(temporary)
    # Only now, with the copy in place, does the source go.
    _remove(source)


def _fsync(path: str) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)
