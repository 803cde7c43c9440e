"""What CPython's and glibc's allocators hold, read from inside a process
(``bench/memory_breakdown.py`` reads them in the bench server's worker)."""

from __future__ import annotations

import os
import sys

__all__ = ["allocators"]

#: ``sys._debugmallocstats()`` lines read into :func:`allocators`, by name.
_PYMALLOC = {
    "arenas * ": "arenas_bytes",
    "# bytes in allocated blocks": "allocated_blocks",
    "# bytes in available blocks": "available_blocks",
    "unused pools * ": "unused_pools",
    "# bytes lost to pool headers": "pool_headers",
    "# bytes lost to quantization": "quantization",
    "# bytes lost to arena alignment": "arena_alignment",
}


def allocators() -> dict[str, int]:
    """pymalloc's arenas (``sys._debugmallocstats()``, which C writes to
    file descriptor 2) and glibc's heap (``mallinfo2``), in bytes: where the
    RSS that tracemalloc does not see sits."""
    import ctypes
    import tempfile

    found: dict[str, int] = {}
    with tempfile.TemporaryFile(mode="w+") as out:
        saved = os.dup(2)
        try:
            sys.stderr.flush()
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        for line in out:
            for mark, name in _PYMALLOC.items():
                if mark in line and "=" in line and name not in found:
                    found[name] = int(line.rsplit("=", 1)[1].strip().replace(",", ""))

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                          "fsmblks", "uordblks", "fordblks", "keepcost")]  # fmt: skip

    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):  # not glibc 2.33+
        return found
    mallinfo2.restype = MallInfo2
    info = mallinfo2()
    found.update(malloc_in_use=info.uordblks, malloc_free=info.fordblks, malloc_mmapped=info.hblkhd)
    return found
