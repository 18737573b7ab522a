"""Find near-duplicate documents with MinHash and locality-sensitive hashing (LSH).

Two documents are near-duplicates when the Jaccard similarity of their sets of k-word shingles is at
least `threshold`. Comparing every pair is quadratic; MinHash + LSH finds the candidate pairs in about
linear time:

1. shingles: the lowercased words of a document (split on whitespace and punctuation), every run of
   `shingle` consecutive words hashed to 64 bits, then reduced into [0, p) (a document shorter than
   that is one shingle);
2. MinHash, one permutation (OPH): each shingle is hashed once more to 64 bits; the high half picks one of
   `num_perm` bins, the low half is its value, and a signature position is the minimum value in its bin;
   an empty bin borrows a filled bin's value through seeded probes (optimal densification, Shrivastava
   2017). Two signatures agree at a position with probability equal to the documents' Jaccard similarity,
   so the share of agreeing positions estimates it (standard error sqrt(J(1-J)/num_perm): 0.018 at J = 0.8
   with 512 bins), and the work is one hash per shingle however long the signature;
3. LSH: the signature is cut into `bands` bands of `num_perm // bands` rows; documents whose band is equal
   in any band become candidate pairs. With b bands of r rows a pair of similarity s becomes a candidate
   with probability 1 - (1 - s**r)**b: for 64 × 8, 1.0 at s = 0.8, 0.66 at 0.6, 0.22 at 0.5;
4. verification: a candidate pair is kept when its estimated Jaccard (signature agreement) is at least
   `threshold`, which removes the LSH's chance collisions;
5. clusters: verified pairs are joined by union-find; each cluster keeps its first document in input
   order and the others are its near-duplicates.

Why 512 bins rather than 128 separate permutations (measured with `bench/near_dup_quality.py`): the
misses at 128 were not the hash family nor the shingling (the estimate's error on the true pairs was
unbiased, mean -0.0004, and its spread 0.027 what sampling predicts, 0.026) but the estimate's noise at the
threshold: of 59 missed near-duplicates 52 were candidates whose estimate fell just under 0.8 (true Jaccard
0.80-0.87), and 48 false positives were pairs just under 0.8 lifted above it. 128 permutations of
(a·x + b) mod p cost one multiply-divide pass per permutation; one-permutation hashing costs one pass, so
4x the signature length (error 0.015 measured instead of 0.027) comes at less time than before; the
bench's F1 went from 0.93 to 0.953-0.963 over seeds 0-5. On documents far shorter than num_perm shingles
most bins are borrowed and the error is larger than num_perm permutations' (1.3x at 26 shingles, 1.1x at
200: tests/data/test_near_dup.py).

All arithmetic is vectorised over all documents' shingles at once with NumPy: a batch's lowercased words
are hashed from its UTF-8 bytes by simple tabulation (a fixed random table, so a run is reproducible and
does not depend on Python's per-process string hash seed; it replaced blake2b per distinct word, which took
most of the shingling time), shingle hashes are rolled from word hashes, bins are filled with one
`np.minimum.at`, and LSH buckets of two documents (most shared ones) are paired without a Python loop. On
SciPy's docstrings plus 1.2k planted copies (4.1k documents) shingling takes 0.11 s, signatures 0.1 s, LSH and
verification 0.03 s on one core of a 2-core machine shared with other jobs; `bench/near_dup_quality.py`
compares quality and speed with datasketch.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from dapt.curation_defaults import DEFAULT_BANDS, DEFAULT_NUM_PERM, DEFAULT_SHINGLE, DEFAULT_THRESHOLD

PRIME = 4_294_967_291  # the largest prime below 2**32
_WORD = re.compile(r"[^\W_]+")
_ASCII_SEPARATORS = str.maketrans({chr(code): " " for code in range(128) if not chr(code).isalnum()})
_U64 = np.uint64
_ROLL = 0x9E3779B97F4A7C15  # odd multiplier of the rolling shingle hash (2**64 / golden ratio)
# Chunks of about this many shingles: 8 bytes × 32k = 256 KiB per temporary array, inside the L2 cache.
_CHUNK_SHINGLES = 1 << 15
# Documents shingled at once. Their words are Python strings while they are hashed (~60 bytes a word):
# 2048 documents of 3 kB took 119 MB of temporaries, 512 of them 31 MB (tracemalloc), which keeps a curate
# worker's memory near its batch's text.
_BATCH_DOCUMENTS = 512
# Buckets bigger than this pair each member with the bucket's first and previous member instead of with
# every other member, which bounds the work on a corpus of many templated documents.
_ALL_PAIRS_MAX_BUCKET = 64
# The word hash's table: one random 64-bit value per (position in the word mod 64, byte); fixed, so a run
# is reproducible and does not depend on Python's per-process string hash seed.
_TABULATION = np.random.default_rng(0x5EED).integers(0, 2**64, size=(64, 256), dtype=np.uint64, endpoint=False)
_TABULATION.flags.writeable = False


def _mix64(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser, in place: spreads every input bit over the output bits."""
    values ^= values >> _U64(33)
    values *= _U64(0xFF51AFD7ED558CCD)
    values ^= values >> _U64(33)
    values *= _U64(0xC4CEB9FE1A85EC53)
    values ^= values >> _U64(33)
    return values


def _word_hashes(joined: bytes, piece_bytes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the words of `joined` (UTF-8 pieces of `piece_bytes` bytes, joined by single spaces, whose
    words are separated by spaces), uint64 of shape (words,), and each piece's number of words.

    Simple tabulation hashing (a random 64-bit value per (position in the word, byte), XORed): 3-independent,
    vectorised over all bytes at once, and 6x faster than hashing each distinct word with blake2b from Python.
    A word's bytes past the 64th reuse the table's rows.
    """
    data = np.frombuffer(joined, dtype=np.uint8)
    in_word = np.concatenate(([False], data != 32, [False]))
    edges = np.flatnonzero(in_word[1:] != in_word[:-1])
    starts, ends = edges[0::2], edges[1::2]  # each word's byte range [start, end)
    piece_starts = np.zeros(len(piece_bytes), dtype=np.int64)
    np.cumsum(piece_bytes[:-1] + 1, out=piece_starts[1:])
    word_counts = np.bincount(np.searchsorted(piece_starts, starts, "right") - 1, minlength=len(piece_bytes))
    if not len(starts):
        return np.empty(0, dtype=np.uint64), word_counts.astype(np.int64)
    lengths = ends - starts
    char_starts = np.zeros(len(starts), dtype=np.int64)  # each word's first byte among the words' bytes
    np.cumsum(lengths[:-1], out=char_starts[1:])
    chars = data[in_word[1:-1]].astype(np.int64)
    word_start = np.zeros(len(chars), dtype=np.int64)  # each byte's word's first byte, by a running maximum
    word_start[char_starts] = char_starts
    np.maximum.accumulate(word_start, out=word_start)
    in_word_position = np.arange(len(chars), dtype=np.int64)
    in_word_position -= word_start
    in_word_position &= _TABULATION.shape[0] - 1
    in_word_position *= 256
    in_word_position += chars
    values = _TABULATION.ravel()[in_word_position]
    return np.bitwise_xor.reduceat(values, char_starts), word_counts.astype(np.int64)


def shingle_hashes(texts: Sequence[str], shingle: int = DEFAULT_SHINGLE) -> tuple[np.ndarray, np.ndarray]:
    """The hashed `shingle`-word shingles of every text, concatenated, and where each text's run starts.

    Returns `(hashes, offsets)`: `hashes` uint64 of shape (total shingles,), each in [0, PRIME);
    `offsets` int64 of shape (len(texts) + 1,): text t's shingles are `hashes[offsets[t]:offsets[t + 1]]`.
    A text with fewer words than `shingle` has one shingle (all its words); one with no words has none.
    """
    if shingle < 1:
        raise ValueError(f"shingle must be at least 1 word, got {shingle}")
    pieces, piece_bytes = [], np.empty(len(texts), dtype=np.int64)
    for t, text in enumerate(texts):
        text = text.lower()
        if text.isascii():  # the same words as the regex's, 2.3x faster: every other character becomes a space
            piece = text.translate(_ASCII_SEPARATORS)
            piece_bytes[t] = len(piece)
        else:
            piece = " ".join(_WORD.findall(text))
            piece_bytes[t] = len(piece.encode())
        pieces.append(piece)
    words, word_counts = _word_hashes(" ".join(pieces).encode(), piece_bytes)

    # Rolling polynomial hash of every window of `shingle` words over the concatenated words; windows that
    # cross a document boundary are computed and then never read.
    windows = max(len(words) - shingle + 1, 0)
    rolled = words[:windows].copy()
    for i in range(1, shingle):
        rolled *= _U64(_ROLL)  # wraps modulo 2**64, as intended
        rolled += words[i : i + windows]

    counts = np.where(word_counts >= shingle, word_counts - shingle + 1, np.minimum(word_counts, 1))
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    word_starts = np.zeros(len(texts), dtype=np.int64)
    np.cumsum(word_counts[:-1], out=word_starts[1:])
    # Shingle j of text t starts at word word_starts[t] + j.
    positions = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1] - word_starts, counts)
    hashes = np.empty(offsets[-1], dtype=np.uint64)
    long_shingles = np.repeat(word_counts >= shingle, counts)
    hashes[long_shingles] = rolled[positions[long_shingles]]
    for t in np.flatnonzero((word_counts > 0) & (word_counts < shingle)):
        short = 0  # the same rolling hash over all the text's words, in Python ints modulo 2**64
        for word in words[word_starts[t] : word_starts[t] + word_counts[t]].tolist():
            short = (short * _ROLL + word) & 0xFFFF_FFFF_FFFF_FFFF
        hashes[offsets[t]] = short
    return _mix64(hashes) % _U64(PRIME), offsets


_EMPTY = np.uint32(0xFFFF_FFFF)  # a bin no shingle fell into (values are below PRIME)
# Rounds of optimal densification before the rest of a very short document's empty bins borrow from their
# next filled bin: after 32 rounds a bin stays empty with probability (1 - filled / num_perm)**32.
_DENSIFY_ROUNDS = 32


@functools.lru_cache(maxsize=8)
def _probe_table(num_perm: int, seed: int) -> np.ndarray:
    """The bin each bin borrows from in each densification round: int64 of shape (_DENSIFY_ROUNDS, num_perm)."""
    rounds = np.arange(1, _DENSIFY_ROUNDS + 1, dtype=np.uint64)[:, None] << _U64(32)
    mixed = _mix64(np.arange(num_perm, dtype=np.uint64) + rounds + _U64(seed * 0x9E37 % 2**32))
    table = ((mixed >> _U64(32)) * _U64(num_perm) >> _U64(32)).astype(np.int64)
    table.flags.writeable = False
    return table


def minhash_signatures(
    hashes: np.ndarray, offsets: np.ndarray, num_perm: int = DEFAULT_NUM_PERM, seed: int = 0
) -> np.ndarray:
    """One-permutation MinHash signatures, uint32 of shape (documents, num_perm), from `shingle_hashes`' output.

    Each shingle is hashed once more (seeded) to 64 bits: the high 32 bits pick one of `num_perm` bins, the
    low 32 bits (mod PRIME) are its value, and a signature position is the minimum value in its bin. A bin
    no shingle fell into borrows the value of a bin chosen by a seeded hash of (bin, round), round after
    round until it finds a filled one (optimal densification, Shrivastava 2017), so two documents' signatures
    agree at each position with probability equal to their Jaccard similarity, as with num_perm separate
    permutations, at the cost of one hash per shingle instead of num_perm. A document without shingles is
    left at PRIME everywhere, a value no bin takes; `lsh_candidate_pairs` never pairs it.
    """
    n_docs = len(offsets) - 1
    mixed = _mix64(hashes ^ _U64((seed * _ROLL + 1) % 2**64))
    bins = ((mixed >> _U64(32)) * _U64(num_perm) >> _U64(32)).astype(np.int64)
    values = ((mixed & _U64(0xFFFF_FFFF)) % _U64(PRIME)).astype(np.uint32)
    counts = np.diff(offsets)
    bins += np.repeat(np.arange(n_docs, dtype=np.int64) * num_perm, counts)
    raw = np.full(n_docs * num_perm, _EMPTY, dtype=np.uint32)
    np.minimum.at(raw, bins, values)
    signatures = raw.copy()
    has_shingles = np.repeat(counts > 0, num_perm)
    empty = np.flatnonzero((raw == _EMPTY) & has_shingles)  # flat positions still to fill
    probes = _probe_table(num_perm, seed)
    power_of_two = num_perm & (num_perm - 1) == 0  # a bin by a bit mask, 3x faster than modulo
    for round_number in range(_DENSIFY_ROUNDS):
        if not len(empty):
            break
        empty_bins = empty & (num_perm - 1) if power_of_two else empty % num_perm
        source = empty - empty_bins
        source += probes[round_number][empty_bins]
        borrowed = raw[source]
        filled = borrowed != _EMPTY
        signatures[empty[filled]] = borrowed[filled]
        empty = empty[~filled]
    if len(empty):
        # Documents of a few shingles: the rest of their empty bins take the next filled bin's value, circularly.
        rows = np.unique(empty // num_perm)
        block = signatures.reshape(n_docs, num_perm)[rows]
        for _ in range(num_perm):
            missing = block == _EMPTY
            if not missing.any():
                break
            block = np.where(missing, np.roll(block, -1, axis=1), block)
        signatures.reshape(n_docs, num_perm)[rows] = block
    signatures[~has_shingles] = PRIME
    return signatures.reshape(n_docs, num_perm)


def estimated_jaccard(signatures: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Share of agreeing signature positions for each pair (left[k], right[k]): float64 of shape (pairs,)."""
    result = np.empty(len(left), dtype=np.float64)
    step = max(1, (1 << 22) // max(signatures.shape[1], 1))  # bounds the (pairs × num_perm) temporary
    for start in range(0, len(left), step):
        chunk = slice(start, start + step)
        result[chunk] = (signatures[left[chunk]] == signatures[right[chunk]]).mean(axis=1)
    return result


def band_keys(signatures: np.ndarray, bands: int) -> np.ndarray:
    """One 64-bit key per band of each signature, uint64 of shape (documents, bands): equal bands, equal keys."""
    n_docs, num_perm = signatures.shape
    if bands < 1 or num_perm % bands:
        raise ValueError(f"num_perm {num_perm} must be a multiple of bands {bands}")
    rows = num_perm // bands
    multipliers = _mix64(np.arange(1, rows + 1, dtype=np.uint64)) | _U64(1)  # odd: a bijection per row
    keys = np.empty((n_docs, bands), dtype=np.uint64)
    for band in range(bands):
        band_rows = signatures[:, band * rows : (band + 1) * rows].astype(np.uint64)
        keys[:, band] = _mix64((band_rows * multipliers).sum(axis=1, dtype=np.uint64))
    return keys


def bucket_pairs(bucket: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The candidate pairs (left, right) of one LSH bucket, `bucket` being its members in ascending input order.

    Every pair in a bucket of up to _ALL_PAIRS_MAX_BUCKET members; in a bigger one each member is paired with
    the first and with the previous member, which joins the same cluster at linear cost.
    """
    size = len(bucket)
    if size <= _ALL_PAIRS_MAX_BUCKET:
        left, right = np.triu_indices(size, k=1)
        return bucket[left], bucket[right]
    return np.concatenate((np.repeat(bucket[:1], size - 1), bucket[1:-1])), np.concatenate((bucket[1:], bucket[2:]))


def lsh_candidate_pairs(signatures: np.ndarray, bands: int) -> np.ndarray:
    """Pairs of documents equal in at least one band, int64 of shape (pairs, 2), each (i, j) with i < j,
    sorted and unique. Documents without shingles (signature all PRIME) are never paired."""
    keys = band_keys(signatures, bands)
    members = np.flatnonzero(signatures[:, 0] != PRIME)
    return banded_candidate_pairs((keys[members, band] for band in range(bands)), members, len(signatures))


def banded_candidate_pairs(keys_by_band: Iterable[np.ndarray], members: np.ndarray, n_docs: int) -> np.ndarray:
    """`lsh_candidate_pairs` one band at a time: `members` are the indices (ascending, below `n_docs`) of the
    documents to pair, `keys_by_band` yields each band's keys of the members (uint64 of shape (len(members),)).

    Memory holds one band's keys and sort order, not the (documents, bands) key matrix, so the keys can be read
    from disk band by band (`dapt.data.executor`)."""
    pair_codes: list[np.ndarray] = []
    for band_keys_of_members in keys_by_band:
        ranks = np.argsort(band_keys_of_members, kind="stable")
        sorted_keys, order = band_keys_of_members[ranks], members[ranks]
        del ranks
        boundaries = np.flatnonzero(np.diff(sorted_keys)) + 1
        del sorted_keys
        run_starts = np.concatenate(([0], boundaries))
        run_ends = np.concatenate((boundaries, [len(order)]))
        sizes = run_ends - run_starts  # most buckets hold one document, most of the others two
        pairs = run_starts[sizes == 2]
        first, second = order[pairs], order[pairs + 1]
        pair_codes.append(np.minimum(first, second) * n_docs + np.maximum(first, second))
        bigger = sizes > 2
        for run_start, run_end in zip(run_starts[bigger].tolist(), run_ends[bigger].tolist(), strict=True):
            left, right = bucket_pairs(np.sort(order[run_start:run_end]))
            pair_codes.append(left * n_docs + right)
    if not pair_codes:
        return np.empty((0, 2), dtype=np.int64)
    codes = np.unique(np.concatenate(pair_codes))
    return np.stack((codes // n_docs, codes % n_docs), axis=1)


@dataclass(frozen=True)
class NearDuplicate:
    """Document `index` is a near-duplicate of the kept document `kept` (indices in the input order).

    `jaccard`: estimated Jaccard with `kept`. `via`, `via_jaccard`: when the document joined the cluster
    through another member rather than directly (A≈B, B≈C, but not A≈C), that member and the estimate
    with it; otherwise `via` is `kept`.
    """

    index: int
    kept: int
    jaccard: float
    via: int
    via_jaccard: float


@dataclass
class NearDuplicateFinder:
    """MinHash + LSH near-duplicate detection over a list of texts (see the module docstring)."""

    shingle: int = DEFAULT_SHINGLE
    num_perm: int = DEFAULT_NUM_PERM
    bands: int = DEFAULT_BANDS
    threshold: float = DEFAULT_THRESHOLD
    seed: int = 0
    candidate_pairs: int = field(init=False, default=0)
    verified_pairs: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.num_perm < 1 or self.bands < 1 or self.num_perm % self.bands:
            raise ValueError(
                f"near-dedup: num_perm {self.num_perm} must be a positive multiple of bands {self.bands} "
                f"(each band takes num_perm / bands signature rows)"
            )
        if not 0 < self.threshold <= 1:
            raise ValueError(f"near-dedup: threshold must be in (0, 1], got {self.threshold}")

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """MinHash signatures of `texts`, uint32 of shape (len(texts), num_perm).

        Texts are shingled in batches, so memory holds one batch's words and shingles (~30 MB) besides
        the signatures (4 bytes × num_perm per document); each batch hashes its own distinct words again,
        which costs about 5% more time than one pass.
        """
        signatures = np.empty((len(texts), self.num_perm), dtype=np.uint32)
        for start in range(0, len(texts), _BATCH_DOCUMENTS):
            hashes, offsets = shingle_hashes(texts[start : start + _BATCH_DOCUMENTS], self.shingle)
            signatures[start : start + len(offsets) - 1] = minhash_signatures(hashes, offsets, self.num_perm, self.seed)
        return signatures

    def find(self, texts: Sequence[str]) -> list[NearDuplicate]:
        """The near-duplicates among `texts`, by index; the first document of each cluster is not listed."""
        return self.find_in_signatures(self.signatures(texts))

    def find_in_signatures(self, signatures: np.ndarray, candidates: np.ndarray | None = None) -> list[NearDuplicate]:
        """`find` from the texts' signatures (uint32, (documents, num_perm)), which can be computed apart.

        `candidates`: the LSH's candidate pairs (`lsh_candidate_pairs`) when found elsewhere (the Ray backend
        groups documents by band key across machines)."""
        if candidates is None:
            candidates = lsh_candidate_pairs(signatures, self.bands)
        jaccard = estimated_jaccard(signatures, candidates[:, 0], candidates[:, 1])
        # A float comparison on k/num_perm: allow for rounding so that 0.8 exactly passes threshold 0.8.
        verified = candidates[jaccard >= self.threshold - 1e-9]
        verified_jaccard = jaccard[jaccard >= self.threshold - 1e-9]
        self.candidate_pairs, self.verified_pairs = len(candidates), len(verified)

        parent = list(range(len(signatures)))

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]  # path halving
                i = parent[i]
            return i

        best_neighbour: dict[int, tuple[float, int]] = {}
        for (i, j), estimate in zip(verified.tolist(), verified_jaccard.tolist(), strict=True):
            root_i, root_j = root(i), root(j)
            if root_i != root_j:
                # The smaller index becomes the root, so a cluster's root is its first document.
                parent[max(root_i, root_j)] = min(root_i, root_j)
            for member, other in ((i, j), (j, i)):
                # Each document's most similar verified partner (the first on ties): what it came "via".
                if (estimate, -other) > best_neighbour.get(member, (-1.0, 0)):
                    best_neighbour[member] = (estimate, -other)

        duplicates = [index for index in range(len(signatures)) if root(index) != index]
        if not duplicates:
            return []
        kept = np.array([root(index) for index in duplicates])
        with_kept = estimated_jaccard(signatures, np.array(duplicates), kept)
        result = []
        for index, kept_index, estimate in zip(duplicates, kept.tolist(), with_kept.tolist(), strict=True):
            via_estimate, negative_via = best_neighbour.get(index, (estimate, -kept_index))
            direct = estimate >= self.threshold - 1e-9
            via = kept_index if direct else -negative_via
            result.append(NearDuplicate(index, kept_index, estimate, via, estimate if direct else via_estimate))
        return result
