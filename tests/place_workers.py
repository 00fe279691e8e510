"""Subprocess bodies for tests/test_pg_blob_place.py (spawned: each a "machine" with its own cache)."""

from __future__ import annotations

import anyio

from artifact_ledger import open_ledger


def first_open(url: str, blobs: str, cache_dir: str, barrier: object, out_path: str) -> None:
    """Wait at ``barrier`` with the other opener, open the ledger with ``blobs``; write "ok" or "err <message>"."""

    async def main() -> str:
        barrier.wait()  # type: ignore[attr-defined]
        try:
            async with open_ledger(url, blobs=blobs, cache_dir=cache_dir):
                return "ok"
        except ValueError as exc:
            return f"err {exc}"

    result = anyio.run(main)
    with open(out_path, "w", encoding="utf-8") as f:
        f.write(result)
