"""Stores populated by real decorated functions, and ways to damage or age them, for the
upkeep and CLI tests."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
from record_helpers import loose_record

from fleche import cache, codec, fleche, tags
from fleche.store import LocalStore, ObjectStore


@fleche(version=1)
def simulate(n, alpha=0.1, label="x"):
    return {"n": n, "alpha": alpha, "label": label}


@fleche
def big(n):
    return np.arange(n, dtype=float)  # 8 bytes a value: beyond the 4 KiB inline limit


@fleche
def same(k):
    return np.zeros(1000)  # every call returns one value: one object shared by all records


SIMULATE = simulate.__fleche__.function_id
BIG = big.__fleche__.function_id
SAME = same.__fleche__.function_id


@dataclass
class Populated:
    store: ObjectStore
    simulate: dict[tuple, str]  # arguments -> call digest
    big: dict[int, str]


def populate(spec: object) -> Populated:
    """7 calls of ``simulate`` (2 tagged), 2 of ``big`` (2 objects): a small, real store."""
    with cache(spec) as c:
        digests = {}
        for n in range(5):
            simulate(n)
            digests[(n,)] = simulate.digest(n)
        with tags(project="paper"):
            simulate(10, alpha=0.2)
            simulate(11, alpha=0.2, label="abc")
        digests[(10, 0.2)] = simulate.digest(10, alpha=0.2)
        digests[(11, 0.2, "abc")] = simulate.digest(11, alpha=0.2, label="abc")
        bigs = {}
        for n in (1000, 2000):
            big(n)
            bigs[n] = big.digest(n)
    return Populated(c.store, digests, bigs)


def rewrite_record(store: ObjectStore, fid: str, digest: str, **metadata: object) -> None:
    """Re-store a record with some metadata changed (an older ``created``, say): a valid record."""
    rec = codec.decode_record(store.get_call(fid, digest))
    rec["metadata"] = {**rec["metadata"], **metadata}
    store.put_call(fid, digest, codec.encode_record(rec))


def age(store: ObjectStore, fid: str, digest: str, days: float) -> None:
    rewrite_record(store, fid, digest, created=time.time() - days * 86400)


def path_of(store: ObjectStore, rel: str) -> str:
    return os.path.join(store.root, *rel.split("/"))


def object_file(store: ObjectStore, oid: str) -> str:
    return path_of(store, f"objects/{oid[:2]}/{oid[2:]}")


def record_file(store: ObjectStore, fid: str, digest: str) -> str:
    """The record's file; on local disk made a loose file first if it was in a segment or a
    pack (``record_helpers.loose_record``), so that damaging it damages what readers read."""
    if isinstance(store, LocalStore) and not store.read_only:
        return str(loose_record(store.root, fid, digest, missing_ok=True))
    return path_of(store, f"calls/{fid}/{digest[:2]}/{digest[2:]}")


def flip_bit(path: str, offset: int = -5) -> None:
    data = bytearray(open(path, "rb").read())
    data[offset] ^= 0x01
    with open(path, "wb") as f:
        f.write(data)


def truncate(path: str) -> None:
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def result_oid(store: ObjectStore, fid: str, digest: str) -> str:
    return codec.decode_record(store.get_call(fid, digest))["result"]["oid"]


def make_old(path: str, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def put_value(store: ObjectStore, value: object) -> str:
    """Store a value object as a cache would (a valid frame), referenced by nothing yet."""
    enc = codec.encode_value(value)
    return store.put(enc.parts, oid=enc.oid)
