"""Cleaning steps, each switchable in ``data.clean`` and counted in the data report.

Per-row steps (run in the Ray workers): whitespace/control characters, Traditional -> Simplified
Chinese (OpenCC ``t2s``), identity rewriting in assistant text, refusal filter. Global steps (run in
the driver on per-row keys computed by the workers): exact de-duplication over normalised
conversations, near-duplicate removal with MinHash LSH (datasketch).
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from typing import Sequence

import numpy as np

# ---------------------------------------------------------------- whitespace / control characters
# C0/C1 controls except \t \n, zero-width characters, BOM, soft hyphen, bidi controls.
_CTRL_RE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff\ufffe\uffff]"
)
_TRAILING_WS_RE = re.compile(r"[ \t\u3000\xa0]+\n")
_MANY_NEWLINES_RE = re.compile(r"\n{3,}")
_ODD_SPACES_RE = re.compile("[\xa0\u2000-\u200a\u202f\u205f]")


def normalize_whitespace(text: str) -> str:
    """Drop control/zero-width characters, unify line breaks and odd spaces, strip trailing spaces on
    lines, collapse 3+ blank lines to one empty line, strip the ends. Full-width space U+3000 inside
    Chinese text is kept (it is meaningful typography), except at line ends."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CTRL_RE.sub("", text)
    text = _ODD_SPACES_RE.sub(" ", text)
    text = _TRAILING_WS_RE.sub("\n", text)
    text = _MANY_NEWLINES_RE.sub("\n\n", text)
    return text.strip()


# ---------------------------------------------------------------- Traditional -> Simplified
@lru_cache(maxsize=1)
def _opencc():
    from opencc import OpenCC

    return OpenCC("t2s")


@lru_cache(maxsize=1)
def _traditional_chars() -> frozenset:
    """Characters that t2s can change (from OpenCC's t2s dictionaries: the differing characters of each
    entry): text without any of them is left unchanged, so the (slow, pure-Python) converter is
    skipped for it."""
    import os

    import opencc

    d = os.path.join(os.path.dirname(opencc.__file__), "dictionary")
    chars: set[str] = set()
    for name in ("TSCharacters.txt", "TSPhrases.txt"):
        with open(os.path.join(d, name), encoding="utf-8") as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) < 2:
                    continue
                key, val = parts[0], parts[1].split(" ")[0]
                if len(key) == len(val):
                    chars.update(k for k, v in zip(key, val) if k != v)
                else:
                    chars.update(key)
    chars.discard("\n")
    return frozenset(chars)


# OpenCC phrases never span punctuation or line breaks: convert only the pieces that contain a
# character t2s can change (the pure-Python converter costs ~1 us per character).
_PIECE_RE = re.compile(r"([\n。！？；，、!?;,.]+)")


def to_simplified(text: str) -> str:
    trad = _traditional_chars()
    if trad.isdisjoint(text):
        return text
    if len(text) < 64:
        return _opencc().convert(text)
    pieces = _PIECE_RE.split(text)
    cc = _opencc()
    return "".join(cc.convert(p) if not trad.isdisjoint(p) else p for p in pieces)


# ---------------------------------------------------------------- identity rewriting
# Self-identification of other assistants in assistant text, rewritten to the configured model.
# Each rule: (regex, replacement); {name} and {owner} are filled from data.clean.identity.
DEFAULT_IDENTITY_RULES: list[tuple[str, str]] = [
    (r"我是\s*(?:ChatGPT|GPT-?4o?|GPT-?3\.5|OpenAI\s*(?:的|开发的)?\s*(?:语言模型|人工智能|AI助手|助手))", "我是{name}"),
    (r"(?:由|被)\s*OpenAI\s*(?:公司)?\s*(开发|训练|创建|打造|研发|推出)", "由{owner}\\1"),
    (r"OpenAI\s*(?:公司)?\s*(开发|训练|创建|打造|研发)的\s*(?:ChatGPT|语言模型|人工智能|AI)", "{owner}\\1的{name}"),
    (r"\bI am ChatGPT\b", "I am {name}"),
    (r"\bI'm ChatGPT\b", "I'm {name}"),
    (r"\b(developed|trained|created|built) by OpenAI\b", "\\1 by {owner}"),
]


class IdentityRewriter:
    def __init__(self, name: str, owner: str, rules: Sequence[Sequence[str]] | None = None):
        rules = DEFAULT_IDENTITY_RULES if rules is None else rules
        self.rules = [
            (re.compile(pat, re.IGNORECASE), rep.replace("{name}", name).replace("{owner}", owner)) for pat, rep in rules
        ]
        self._quick = re.compile(r"chatgpt|openai|gpt", re.IGNORECASE)

    def __call__(self, text: str) -> str:
        if not self._quick.search(text):
            return text
        for pat, rep in self.rules:
            text = pat.sub(rep, text)
        return text


# ---------------------------------------------------------------- refusal filter
# (the phrases: data.clean.refusal.phrases in conf/data/_common.yaml)
class RefusalFilter:
    def __init__(self, phrases: Sequence[str]):
        self.phrases = [p.lower() for p in phrases if p]

    def match(self, text: str) -> str | None:
        low = text.lower()
        for p in self.phrases:
            if p in low:
                return p
        return None


# ---------------------------------------------------------------- dedup keys
_DEDUP_DROP_RE = re.compile(r"\s+")


# Full-width ASCII variants -> ASCII, ideographic space -> space (the part of NFKC that matters for
# Chinese chat text, at str.translate speed); then lowercase, whitespace removed.
_WIDTH_TABLE = {0xFF01 + i: 0x21 + i for i in range(0x5E)}
_WIDTH_TABLE[0x3000] = 0x20


def dedup_text(messages: Sequence[dict]) -> str:
    """Normalised conversation for de-duplication: full-width -> half-width, lowercase, no whitespace."""
    parts = []
    for m in messages:
        t = m["content"].translate(_WIDTH_TABLE).lower()
        parts.append(m["role"][0] + ":" + "".join(t.split()))
    return "\x1e".join(parts)


def exact_key(norm_text: str) -> bytes:
    return hashlib.blake2b(norm_text.encode("utf-8"), digest_size=16).digest()


_MAX32 = np.uint64((1 << 32) - 1)
_SHIFT32 = np.uint64(32)


@lru_cache(maxsize=8)
def _permutations(num_perm: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of the multiply-shift hash family h -> ((a*h + b) mod 2^64) >> 32, a odd."""
    gen = np.random.RandomState(seed)
    a = gen.randint(1, 2**63 - 1, size=num_perm, dtype=np.uint64) | np.uint64(1)
    b = gen.randint(0, 2**63 - 1, size=num_perm, dtype=np.uint64)
    return a, b


def minhash_signature(norm_text: str, num_perm: int = 128, ngram: int = 5) -> np.ndarray:
    """MinHash signature (uint64[num_perm] holding 32-bit values) over character n-grams, vectorised.

    Shingle hashes: a polynomial hash of the n code points, mixed with murmur3's 32-bit finaliser.
    Permutations: multiply-shift hashing (Dietzfelbinger), no modulo, so one signature of a
    1,000-character conversation costs ~0.1 ms. The signatures feed LSH banding with datasketch's
    (b, r) parameters (see :func:`near_duplicates`)."""
    text = norm_text.replace("\x1e", "")
    cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    if len(cps) == 0:
        cps = np.zeros(1, dtype=np.uint64)
    n = min(ngram, len(cps))
    m = len(cps) - n + 1
    h = cps[:m].copy()
    for k in range(1, n):
        h *= np.uint64(1000003)
        h += cps[k : m + k]
        h &= _MAX32
    # murmur3 fmix32
    h ^= h >> np.uint64(16)
    h *= np.uint64(0x85EBCA6B)
    h &= _MAX32
    h ^= h >> np.uint64(13)
    h *= np.uint64(0xC2B2AE35)
    h &= _MAX32
    h ^= h >> np.uint64(16)
    a, b = _permutations(num_perm)  # repeated shingles do not change the minimum: no unique() needed
    x = h[None, :] * a[:, None]  # wraps mod 2^64 (intended)
    x += b[:, None]
    # the top 32 bits are the hash; min commutes with the (monotone) shift
    return x.min(axis=1) >> _SHIFT32


@lru_cache(maxsize=8)
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) that datasketch's MinHashLSH picks for this threshold (equal weights
    of false positives and negatives)."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return int(lsh.b), int(lsh.r)


_BAND_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant (golden ratio), for mixing


def band_hashes(sigs: np.ndarray, threshold: float, num_perm: int) -> np.ndarray:
    """[n, bands] uint64: one hash per LSH band of each signature (datasketch's (b, r) for
    ``threshold``). Rows equal in a band have equal hashes; the driver buckets by these 8 bytes per
    band instead of the whole signature (4 bytes x ``num_perm``), which stays on disk."""
    b, r = lsh_params(threshold, num_perm)
    sig = np.asarray(sigs, dtype=np.uint64).reshape(-1, num_perm)
    out = np.empty((len(sig), b), dtype=np.uint64)
    for band in range(b):
        h = np.full(len(sig), np.uint64(band + 1), dtype=np.uint64)
        for k in range(band * r, (band + 1) * r):
            h ^= sig[:, k]  # wraps mod 2^64 (intended)
            h *= _BAND_MIX
            h ^= h >> np.uint64(29)
        out[:, band] = h
    return out


def near_duplicates_banded(bands: np.ndarray, similarity, threshold: float, chunk: int = 1 << 14) -> np.ndarray:
    """Per row (rows in input order): the earliest earlier row it nearly duplicates, or -1.

    Candidates: in each band, every row and the first row of its bucket (equal band hashes). Each
    is verified by the estimated Jaccard similarity (share of equal signature values) >= threshold:
    ``similarity(a, b)`` gives it for rows ``a[k]``, ``b[k]``, ``chunk`` pairs at a time, so the
    signatures it reads back stay bounded. Bands are searched one after the other, and a candidate
    no earlier than the row's best so far is not checked again, so memory is a few arrays of the
    row count whatever the number of duplicates. Vectorised with numpy: no per-row Python work."""
    n = len(bands)
    idx = np.arange(n)
    best = np.full(n, n, dtype=np.int64)
    for band in range(bands.shape[1] if n else 0):
        _, first, inverse = np.unique(bands[:, band], return_index=True, return_inverse=True)
        cand = first[inverse.ravel()]
        del first, inverse
        has = np.flatnonzero(cand < np.minimum(idx, best))
        for s in range(0, len(has), chunk):
            a = has[s:s + chunk]
            b = cand[a]
            ok = np.asarray(similarity(a, b)) >= threshold
            best[a[ok]] = np.minimum(best[a[ok]], b[ok])
    best[best == n] = -1
    return best


def near_duplicates(
    keys: Sequence, signatures: Sequence[np.ndarray] | np.ndarray, threshold: float, num_perm: int
) -> dict:
    """Map key -> key of an earlier row it nearly duplicates (first occurrence is kept): LSH
    banding with datasketch's (b, r) for ``threshold``, candidates verified by the estimated Jaccard
    similarity, as :func:`near_duplicates_banded` (here with the signatures in memory)."""
    n = len(keys)
    if n == 0:
        return {}
    sig = np.asarray(signatures, dtype=np.uint64).reshape(n, num_perm)
    best = near_duplicates_banded(band_hashes(sig, threshold, num_perm),
                                  lambda a, b: (sig[a] == sig[b]).mean(axis=1), threshold)
    return {keys[i]: keys[int(best[i])] for i in np.flatnonzero(best >= 0).tolist()}


def jaccard_estimate(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.asarray(a) == np.asarray(b)))


_WHITESPACE = (" ", "\n", "\t", "\u3000", "\r", "\xa0", "\x0b", "\x0c")


def char_stats(text: str) -> tuple[int, int]:
    """(Chinese characters, non-whitespace characters) of a text. Chinese = CJK unified ideographs
    U+3400..U+9FFF (extension A + the main block) and the compatibility block; rarer extensions
    are not counted."""
    cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    zh = int(np.count_nonzero((cps - np.uint32(0x3400)) < np.uint32(0x9FFF - 0x3400 + 1)))
    return zh, len(text) - sum(text.count(c) for c in _WHITESPACE)


def chinese_chars(text: str) -> int:
    return char_stats(text)[0]


def nonspace_chars(text: str) -> int:
    return char_stats(text)[1]
