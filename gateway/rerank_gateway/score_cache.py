"""An exact cache of pair scores: the same (model, template, truncation, query, passage) is scored once.

Rerankers see the same pairs again and again (a retriever returns the same top passages for a popular
query; a user pages through results; an agent retries), and a score costs a full forward pass. The
cache answers such a pair with the very logit the engine gave the first time, bit for bit.

The key is a SHA-256 digest of everything that determines a score:
- the served model's identity: the ``model_fingerprint`` the ensemble publishes (a digest of its
  weights or engine plan, tokenizer, template and configs, written at assembly), so that a server
  restarted with another checkpoint is never answered from an old entry;
- the prompt template (``rerank_contract.prompt.TEMPLATE``);
- the truncation mode in canonical form, and under CHUNK the window overlap;
- the query and the passage.
A digest, not the texts, is kept: an entry costs the same few hundred bytes whatever the passage's
length. (Two different keys sharing a SHA-256 digest has never been observed; at 2^-128 per pair it is
not a practical concern.)

The value is packed as float32 logit, float32 relevance score, int32 token count, int32 windows: the
engine's logit is a float32, so packing it loses nothing.

Bounded in bytes (:data:`ENTRY_BYTES` per entry, a measured upper bound) with least-recently-used
eviction. One cache per worker process: uvicorn's workers are separate processes, and sharing would
need shared memory or an external store whose round trip costs about what a short pair's score costs
on a GPU; a deployment wanting one shared cache puts it in front of the gateways.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

from rerank_contract import prompt as rp

#: What one entry costs in memory, bytes: the 32-byte digest as a bytes object (65), the 16-byte packed
#: value (49) and the OrderedDict's slot and linked-list node. tests/test_score_cache.py measures the
#: real cost with tracemalloc and checks it stays under this.
ENTRY_BYTES = 256
_VALUE = struct.Struct("<ffii")


@dataclass(frozen=True)
class Entry:
    """One pair's score as the engine gave it."""

    logit: float
    relevance_score: float
    token_count: int
    chunks: int

    def pack(self) -> bytes:
        return _VALUE.pack(self.logit, self.relevance_score, self.token_count, self.chunks)

    @classmethod
    def unpack(cls, data: bytes) -> "Entry":
        return cls(*_VALUE.unpack(data))


def _field(digest: "hashlib._Hash", data: bytes) -> None:
    """Length-prefixed, so that no two different field lists hash the same bytes."""
    digest.update(len(data).to_bytes(8, "little"))
    digest.update(data)


def request_keys(identity: str, truncate: str, chunk_overlap: int | None, query: str,
                 passages: Sequence[str]) -> list[bytes]:
    """The key of each passage's pair. ``truncate`` canonical (NONE, END, CHUNK); ``chunk_overlap`` the
    overlap CHUNK uses (the resolved default included), None otherwise."""
    head = hashlib.sha256()
    for part in (identity, rp.TEMPLATE, truncate, "" if chunk_overlap is None else str(chunk_overlap), query):
        _field(head, part.encode("utf-8", "surrogatepass"))
    keys = []
    for passage in passages:
        digest = head.copy()
        _field(digest, passage.encode("utf-8", "surrogatepass"))
        keys.append(digest.digest())
    return keys


class ScoreCache:
    """Least-recently-used map of pair keys to scores, at most ``max_bytes`` (in :data:`ENTRY_BYTES` each).

    A worker's event loop is single-threaded and no method awaits, so no lock is needed.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < ENTRY_BYTES:
            raise ValueError(f"the score cache needs at least {ENTRY_BYTES} bytes (one entry), got {max_bytes}")
        self.max_entries = max_bytes // ENTRY_BYTES
        self._entries: OrderedDict[bytes, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return len(self._entries) * ENTRY_BYTES

    def get(self, key: bytes) -> Entry | None:
        data = self._entries.get(key)
        if data is None:
            return None
        self._entries.move_to_end(key)
        return Entry.unpack(data)

    def put(self, key: bytes, entry: Entry) -> None:
        self._entries[key] = entry.pack()
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


@dataclass
class Lookup:
    """One request's pass through the cache: each passage's key, and the entries found."""

    identity: str
    keys: list[bytes]
    hits: dict[int, Entry]

    @classmethod
    def of(cls, cache: ScoreCache, identity: str, keys: list[bytes]) -> "Lookup":
        hits = {}
        for i, key in enumerate(keys):
            entry = cache.get(key)
            if entry is not None:
                hits[i] = entry
        return cls(identity, keys, hits)

    @property
    def missing(self) -> list[int]:
        """Indices of the passages Triton must score."""
        return [i for i in range(len(self.keys)) if i not in self.hits]
