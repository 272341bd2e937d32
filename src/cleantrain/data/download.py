"""Fetch a dataset file into the cache folder, verifying its checksum."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path

from ..errors import UserError


def cache_dir() -> Path:
    """`$CLEANTRAIN_CACHE`, else `~/.cache/cleantrain`."""
    root = os.environ.get("CLEANTRAIN_CACHE") or os.path.join(Path.home(), ".cache", "cleantrain")
    return Path(root)


def file_hash(path: Path, algo: str = "md5") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(urls: list[str], dest: Path, md5: str | None) -> Path:
    """Return `dest`, downloading it from the first URL that works if absent.

    A file already there is re-verified; a bad one is replaced. Writes go to a
    temporary file that is renamed into place only once its checksum matches.
    """
    if dest.is_file() and (md5 is None or file_hash(dest) == md5):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as r:
                for chunk in iter(lambda: r.read(1 << 20), b""):
                    out.write(chunk)
            got = file_hash(Path(tmp))
            if md5 is not None and got != md5:
                raise OSError(f"checksum mismatch (md5 {got}, expected {md5})")
            os.replace(tmp, dest)
            return dest
        except Exception as e:  # network errors come in many types
            errors.append(f"{url}: {e}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise UserError(
        f"could not download {dest.name} ({'; '.join(errors)}); place the file at {dest} by hand"
    )
