"""Read members of tar / zip archives into memory, safely.

Nothing is extracted to disk, so a member name can never write outside a
folder; names that are absolute or climb out with `..` are refused anyway
(no official archive has them). Only regular files are read, each member's
declared size is checked before reading, and the number of members is
bounded. Any read error (truncated, corrupt, not an archive) is a UserError
naming the file.
"""

from __future__ import annotations

import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Callable

from ..errors import UserError

MAX_MEMBERS = 200_000
ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError)


def member_name(name: str, archive: Path) -> str:
    """The normalised member path (no leading './'); refuses unsafe names."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts:
        raise UserError(f"{archive}: refusing unsafe member name {name!r}")
    return "/".join(part for part in p.parts if part != ".")


def read_tar(path: Path, wanted: Callable[[str], bool], max_size: int) -> dict[str, bytes]:
    """{name: bytes} of the regular-file members of a (compressed) tar whose
    normalised name passes `wanted`."""
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for i, m in enumerate(tar):
                if i >= MAX_MEMBERS:
                    raise UserError(f"{path}: more than {MAX_MEMBERS} members")
                name = member_name(m.name, path)
                if not m.isfile() or not wanted(name):
                    continue
                if m.size > max_size:
                    raise UserError(f"{path}: member {name} is {m.size} bytes, more than the {max_size} allowed")
                f = tar.extractfile(m)
                data = f.read() if f is not None else b""
                if len(data) != m.size:
                    raise UserError(f"{path}: member {name} is truncated")
                out[name] = data
    except ARCHIVE_ERRORS as e:
        raise UserError(f"{path}: cannot read tar archive (truncated or corrupt: {e})")
    return out


def read_zip(path: Path, wanted: Callable[[str], bool], max_size: int) -> dict[str, bytes]:
    """{name: bytes} of the file members of a zip whose normalised name passes `wanted`."""
    out: dict[str, bytes] = {}
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            if len(infos) > MAX_MEMBERS:
                raise UserError(f"{path}: more than {MAX_MEMBERS} members")
            for info in infos:
                name = member_name(info.filename, path)
                if info.is_dir() or not wanted(name):
                    continue
                if info.file_size > max_size:
                    raise UserError(f"{path}: member {name} is {info.file_size} bytes, more than the {max_size} allowed")
                out[name] = z.read(info)  # reads at most file_size bytes and checks the CRC
    except ARCHIVE_ERRORS as e:
        raise UserError(f"{path}: cannot read zip archive (truncated or corrupt: {e})")
    return out
