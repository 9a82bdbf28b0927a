"""Shamir t-of-n secret sharing over the prime field GF(2^521 − 1).

Shamir 1979, "How to Share a Secret": a secret s is the constant term of a random
polynomial f of degree t − 1; share i is (i, f(i)). Any t shares give s = f(0) by
Lagrange interpolation at 0; fewer reveal nothing. The field is the Mersenne prime
2^521 − 1, larger than every 256-bit secret shared here. Coefficients come from
``secrets`` (the OS CSPRNG).
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Sequence

PRIME = 2**521 - 1


def split(secret: bytes, threshold: int, xs: Sequence[int]) -> dict[int, int]:
    """Shares of ``secret`` (≤ 64 bytes) for the points ``xs`` (distinct, non-zero)."""
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold {threshold} must be in [1, {len(xs)}]")
    s = int.from_bytes(secret, "big")
    if s >= PRIME:
        raise ValueError("secret too large for the field")
    coeffs = [s] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = {}
    for x in xs:
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        shares[x] = y
    return shares


@functools.lru_cache(maxsize=64)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Lagrange basis coefficients ℓ_i(0) for the points ``xs`` (cached: a round rebuilds
    many secrets from the same set of responders)."""
    out = []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num = num * (-xj) % PRIME
                den = den * (xi - xj) % PRIME
        out.append(num * pow(den, PRIME - 2, PRIME) % PRIME)
    return tuple(out)


def reconstruct(shares: dict[int, int], length: int = 32) -> bytes:
    """The secret from at least ``threshold`` shares {x: y} (Lagrange at 0)."""
    xs = tuple(sorted(shares))
    s = sum(shares[x] * c for x, c in zip(xs, _lagrange_at_zero(xs), strict=True)) % PRIME
    if s >= 1 << (8 * length):  # fewer than t (or inconsistent) shares give a random s
        raise ValueError("the shares do not reconstruct a secret (too few or inconsistent)")
    return s.to_bytes(length, "big")


def value_at(points: dict[int, int], x0: int) -> int:
    """f(x0) for the polynomial of degree < len(points) through ``points`` (Lagrange)."""
    total = 0
    for xi, yi in points.items():
        num, den = 1, 1
        for xj in points:
            if xj != xi:
                num = num * (x0 - xj) % PRIME
                den = den * (xi - xj) % PRIME
        total = (total + yi * num * pow(den, PRIME - 2, PRIME)) % PRIME
    return total


def reconstruct_robust(
    shares: dict[int, int], threshold: int, length: int = 32, tries: int = 64
) -> tuple[bytes, list[int]]:
    """(secret, x of the false shares) when some t of ``shares`` determine a polynomial that
    at least one further share confirms and whose secret is in range; the shares off that
    polynomial are the false ones. Raises ValueError when no such subset is found within
    ``tries`` subsets (too few honest shares)."""
    import itertools

    xs = sorted(shares)
    for subset in itertools.islice(itertools.combinations(xs, threshold), tries):
        base = {x: shares[x] for x in subset}
        agree = [x for x in xs if x in base or value_at(base, x) == shares[x]]
        if len(agree) <= threshold:
            continue
        s = value_at(base, 0)
        if s < 1 << (8 * length):
            return s.to_bytes(length, "big"), [x for x in xs if x not in agree]
    raise ValueError("the shares do not reconstruct a secret (too few consistent shares)")
