"""Keeping a cache folder bounded: delete its least recently used files past a size."""

from __future__ import annotations

import os


def prune_least_recent(folder: str, suffix: str, max_bytes: int) -> int:
    """Delete the files named `*suffix` directly in `folder`, least recently used first, until the rest
    take at most `max_bytes`; returns how many were deleted.

    A file's last use is the later of its access and modification times: a cache that renews the
    modification time on every read (gflow's stored programs) is ordered exactly, and one that does
    not (JAX's compilation cache) by the access time, which Linux's default `relatime` renews on the
    first read after a write and then at most daily. Other files, folders and links are left alone;
    a file another process removed first is skipped. A deleted entry is only work again: it is
    compiled (or exported) anew the next time it is wanted."""
    entries = []
    try:
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.endswith(suffix) and entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    entries.append((max(st.st_atime, st.st_mtime), st.st_size, entry.path))
    except OSError:
        return 0
    total, deleted = sum(size for _, size, _ in entries), 0
    for _, size, path in sorted(entries):
        if total <= max_bytes:
            break
        try:
            os.remove(path)
        except OSError:
            continue
        total -= size
        deleted += 1
    return deleted
