"""Seed derivation: the one place seeds come from. Nothing here touches the global RNG."""

from __future__ import annotations

import hashlib


def derive_seed(*keys: int | str) -> int:
    """A stable 63-bit seed from a tuple of keys (run seed, task, step, block, query, ...).

    Hash-based rather than `seed + offset` so that neighbouring keys give unrelated streams, and
    same-shaped blocks never share a direction (with one seed per shape, two blocks would move together and
    their estimates would be correlated instead of independent).
    """
    digest = hashlib.blake2b(repr(keys).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
