"""Seed derivation: the one place seeds come from. Nothing here touches the global RNG."""

from __future__ import annotations

import hashlib


def derive_seed(*keys: int | str) -> int:
    """A stable 63-bit seed from a tuple of keys (run seed, task, step, block, query, ...).

    Hash-based rather than `seed + offset` so that neighbouring keys give unrelated streams, and
    same-shaped blocks never share a direction (the ZO-Bench block-wise pitfall, zo.md §3.3).
    """
    digest = hashlib.blake2b(repr(keys).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
