"""The fused-shard format (docs/formats.md): one HDF5 file per run of consecutive scans.

Datasets, concatenated over the shard's scans:
    points    float32 (P, 4)  x, y, z, remission; per scan the original points first,
                              byte-identical to the `.bin`, then the fused points
    labels    uint8   (P,)    train ids 0..19
    instance  uint32  (P,)    SemanticKITTI instance ids
    source    int8    (P,)    0 = original point, k = fused from scan t+k
Per scan:
    offsets    int64 (S+1,)   scan i is rows offsets[i]:offsets[i+1]
    n_original int32 (S,)     the first n_original rows of a scan are the single scan
    frame      int32 (S,)     frame number within the sequence
Attributes: format_version, sequence, window, hard_classes, config (JSON).

Shards are written to a temp name and renamed when complete; each finished shard has a
sidecar `NAME.h5.json` with its manifest entry (config hash, sha256), and the cache's
`manifest.json` gathers them.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .atomic import atomic_path
from .digest import file_sha256
from .outputs import check_free_space, ensure_writable_dir
from .views import check_view

FORMAT_VERSION = 1
DATASETS = {"points": np.float32, "labels": np.uint8, "instance": np.uint32, "source": np.int8}
PER_SCAN = {"offsets": np.int64, "n_original": np.int32, "frame": np.int32}
CHUNK_ROWS = 65536  # ~1 MB of points: big enough for lzf, small enough to read a scan's rows
MANIFEST = "manifest.json"
# A scan's two views: `single` = its own points (student, baseline), `fused` = with the
# fused neighbour points (teacher). The one vocabulary for them, loader and CLI included.


class ShardError(ValueError):
    """A shard or cache that does not match the format or the expected config."""


@dataclass
class FusedScan:
    """One teacher input: original points first, then fused hard-instance points."""

    frame: int
    points: np.ndarray  # (P, 4) float32
    labels: np.ndarray  # (P,) uint8 train ids
    instance: np.ndarray  # (P,) uint32
    source: np.ndarray  # (P,) int8
    n_original: int

    def __post_init__(self) -> None:
        n = len(self.points)
        if not (len(self.labels) == len(self.instance) == len(self.source) == n) or not 0 <= self.n_original <= n:
            raise ShardError(f"frame {self.frame}: inconsistent fused scan arrays")


RESUME_FUSE = "free some space and rerun `make fuse` (m2skd-fuse) to resume: finished shards are kept"


def shard_name(sequence: str, first: int, last: int) -> str:
    return f"seq{sequence}_{first:06d}-{last:06d}.h5"


def write_shard(path: str | os.PathLike, scans: list[FusedScan], attrs: dict, compress_points: bool = False,
                own_points: bool = True) -> dict:
    """Write scans to `path` atomically (chunked, lzf); return its manifest entry.

    lzf on raw float32 LiDAR points saves nothing (measured ratio 1.00) and costs ~20 ms
    a full-size scan, so `points` is stored uncompressed unless `compress_points`, which
    adds the byte-shuffle filter first (ratio 0.78 at the same cost). The integer
    datasets are always lzf-compressed: they shrink many-fold for almost nothing.
    """
    path = Path(path)
    if not scans:
        raise ShardError(f"{path}: no scans to write")
    if not own_points:  # the compact layout: the fused rows alone, own points stay in the .bin
        scans = [_fused_rows(s) for s in scans]
    sizes = np.array([len(s.points) for s in scans], np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    total = int(offsets[-1])
    ensure_writable_dir(path.parent)  # made, or refused in one line, before the space check needs it
    # a full disk mid-write crashed HDF5 (a segfault, not an exception): refuse up front
    check_free_space(path.parent, total * sum(np.dtype(t).itemsize * (4 if k == "points" else 1)
                                              for k, t in DATASETS.items()), f"shard {path.name}")
    _write_datasets(path, scans, sizes, offsets, attrs, compress_points)
    entry = {
        "file": path.name,
        "sequence": attrs.get("sequence"),
        "frames": [int(scans[0].frame), int(scans[-1].frame)],
        "scans": len(scans),
        "points": int(offsets[-1]),
        "original_points": int(sum(s.n_original for s in scans)),
        "config_hash": attrs.get("config_hash"),
        "input_hash": attrs.get("input_hash"),
        "sha256": file_sha256(path),
        "content_sha256": content_sha256(scans, offsets),
    }
    with atomic_path(sidecar(path), RESUME_FUSE) as tmp:
        tmp.write_text(json.dumps(entry, indent=1))
    return entry


def _write_datasets(path: Path, scans: list[FusedScan], sizes: np.ndarray, offsets: np.ndarray, attrs: dict,
                    compress_points: bool) -> None:
    total = int(offsets[-1])
    with atomic_path(path, RESUME_FUSE) as tmp:
        # Each scan goes straight into its rows of preallocated datasets: concatenating a
        # shard first copied ~130 MB and cost more than the fusion itself. The chunk cache
        # holds a chunk of every dataset until it is full, so each chunk is compressed once.
        with h5py.File(tmp, "w", rdcc_nbytes=8 << 20) as f:
            dsets = {}
            for name, dtype in DATASETS.items():
                shape = (total, 4) if name == "points" else (total,)
                compress = total > 0 and (name != "points" or compress_points)
                dsets[name] = f.create_dataset(
                    name, shape, dtype, chunks=(min(total, CHUNK_ROWS), *shape[1:]) if total else None,
                    compression="lzf" if compress else None, shuffle=bool(compress and name == "points"))
            for i, scan in enumerate(scans):
                if sizes[i]:
                    for name, dset in dsets.items():
                        dset[offsets[i]:offsets[i + 1]] = getattr(scan, name)
            f.create_dataset("offsets", data=offsets)
            f.create_dataset("n_original", data=np.array([s.n_original for s in scans], np.int32))
            f.create_dataset("frame", data=np.array([s.frame for s in scans], np.int32))
            f.attrs["format_version"] = FORMAT_VERSION
            for k, v in attrs.items():
                f.attrs[k] = json.dumps(v) if isinstance(v, (dict, list, tuple)) else v


@dataclass
class _Rows:
    """The rows a shard stores of one scan (all of them, or only the fused ones)."""

    frame: int
    points: np.ndarray
    labels: np.ndarray
    instance: np.ndarray
    source: np.ndarray
    n_original: int


def _fused_rows(s: FusedScan) -> _Rows:
    n = s.n_original
    return _Rows(s.frame, s.points[n:], s.labels[n:], s.instance[n:], s.source[n:], n)


def content_sha256(scans: list[FusedScan | _Rows], offsets: np.ndarray) -> str:
    """sha256 of what a shard stores, not of its bytes (docs/formats.md): each dataset whole,
    in the order points, labels, instance, source, offsets, n_original, frame, as the
    little-endian arrays of the dtypes stored.

    The file's sha256 tells a damaged file; it cannot tell "rebuilt from other inputs" from
    "rebuilt from the same ones", because h5py's lzf leaves its hash table uninitialised and
    the compressed bytes vary between processes. This digest can: a resumed run compares it
    (train/engine/run.py) and refuses a cache whose content changed under it."""
    h = hashlib.sha256()
    for name, dtype in DATASETS.items():
        for s in scans:
            h.update(np.ascontiguousarray(getattr(s, name), np.dtype(dtype).newbyteorder("<")))  # no copy
    h.update(np.asarray(offsets, "<i8").tobytes())
    h.update(np.array([s.n_original for s in scans], "<i4").tobytes())
    h.update(np.array([s.frame for s in scans], "<i4").tobytes())
    return h.hexdigest()


def sidecar(path: str | os.PathLike) -> Path:
    return Path(f"{path}.json")


def finished_entry(path: str | os.PathLike, config_hash: str, input_hash: str | None = None,
                   verify: bool = True) -> dict | None:
    """The sidecar entry of a complete shard built with `config_hash` (and, if given, from
    inputs with `input_hash`), else None.

    With verify, the file's sha256 must match too (a corrupt or truncated shard is redone).
    """
    path = Path(path)
    side = sidecar(path)
    if not (path.is_file() and side.is_file()):
        return None
    try:
        entry = json.loads(side.read_text())
    except json.JSONDecodeError:
        return None
    if entry.get("config_hash") != config_hash:
        return None
    if input_hash is not None and entry.get("input_hash") != input_hash:
        return None
    if verify and file_sha256(path) != entry.get("sha256"):
        return None
    return entry


def write_manifest(cache: str | os.PathLike, config: dict, config_hash: str) -> dict:
    """Gather every finished shard's sidecar into CACHE/manifest.json."""
    cache = Path(cache)
    entries = []
    for side in sorted(cache.glob("*.h5.json")):
        entry = json.loads(side.read_text())
        if entry.get("config_hash") == config_hash and (cache / entry["file"]).is_file():
            entries.append(entry)
    manifest = {"format_version": FORMAT_VERSION, "config": config, "config_hash": config_hash,
                "shards": entries, "scans": sum(e["scans"] for e in entries)}
    with atomic_path(cache / MANIFEST, RESUME_FUSE) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1))
    return manifest


def is_manifest(m: object) -> bool:
    """Shaped like a manifest m2skd-fuse writes: a list of shards with file, sequence and scans."""
    return isinstance(m, dict) and isinstance(m.get("shards"), list) and all(
        isinstance(e, dict) and {"file", "sequence", "scans"} <= set(e) for e in m["shards"])


def cache_content(entries: list[dict]) -> str | None:
    """One digest of the content of these shards (their `content_sha256`, in order), or None
    when one was written before shards recorded it."""
    digests = [e.get("content_sha256") for e in entries]
    if not digests or None in digests:
        return None
    joined = ";".join(f"{e['file']}:{d}" for e, d in zip(entries, digests, strict=True))
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


def read_manifest(cache: str | os.PathLike) -> dict:
    path = Path(cache) / MANIFEST
    if not path.is_file():
        raise ShardError(f"{path}: no manifest; run `make fuse` (m2skd-fuse) to build the cache first")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardError(f"{path}: not valid JSON ({e}); rerun `make fuse` to rewrite it") from None
    if not is_manifest(manifest):
        raise ShardError(f"{path}: not an m2skd manifest (no list of shards with file, sequence and scans); "
                         "rerun `make fuse` to rewrite it")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ShardError(f"{path}: shard format {manifest.get('format_version')}, this code reads {FORMAT_VERSION}")
    if not manifest.get("shards"):
        raise ShardError(f"{path}: the cache holds no shards")
    return manifest


class ShardReader:
    """Random access to the scans of one shard; opens the file lazily (per process).

    With `sha256` (the manifest's), the file is checked against it when the reader is made:
    a damaged shard is refused before a single point of it is trained on or scored."""

    def __init__(self, path: str | os.PathLike, sha256: str | None = None) -> None:
        self.path = Path(path)
        self._f: h5py.File | None = None
        if sha256 is not None and self.path.is_file() and file_sha256(self.path) != sha256:
            raise ShardError(f"{self.path}: damaged (its bytes no longer match the sha256 that fusion recorded); "
                             "rebuild it with `m2skd-fuse` (make fuse), which redoes damaged shards")
        with self._open() as f:
            missing = [k for k in (*DATASETS, *PER_SCAN) if k not in f]
            if missing:
                raise ShardError(f"{self.path}: missing dataset(s) {missing}")
            if f.attrs.get("format_version") != FORMAT_VERSION:
                raise ShardError(f"{self.path}: format version {f.attrs.get('format_version')} != {FORMAT_VERSION}")
            self.offsets = f["offsets"][:]
            self.n_original = f["n_original"][:]
            self.frames = f["frame"][:]
            self.attrs = {k: _attr(v) for k, v in f.attrs.items()}
        if self.compact:
            self._check_inputs()

    def __len__(self) -> int:
        return len(self.frames)

    def _file(self) -> h5py.File:
        # h5py handles must not cross fork(): each process opens its own
        if self._f is None or self._pid != os.getpid():
            self._f = self._open()
            self._pid = os.getpid()
        return self._f

    def _open(self) -> h5py.File:
        try:
            return h5py.File(self.path, "r")
        except OSError as e:  # missing, truncated, not HDF5: h5py's message names no file
            raise ShardError(f"{self.path}: not a readable fused shard ({e}); rerun `make fuse` to rebuild "
                             "the cache") from None

    @property
    def compact(self) -> bool:
        return self.attrs.get("layout") == "compact"

    def _check_inputs(self) -> None:
        """A compact shard reads its scans' own points back from the dataset: the files it
        was fused from must be those still on disk (same sizes and times), else a scan
        edited in place with its point count kept (points moved, labels changed) would be
        trained and scored on silently."""
        from .kitti_io import Sequence, input_fingerprint

        seq = Sequence(Path(self.attrs["data_root"]), str(self.attrs["sequence"]))
        config = self.attrs["config"]
        fusion = (json.loads(config) if isinstance(config, str) else config)["fusion"]
        try:
            n_frames = len(seq.frames())
            now = input_fingerprint(seq, int(self.frames[0]), int(self.frames[-1]),
                                    (-int(fusion["past"]), int(fusion["future"])), n_frames)
        except (OSError, ValueError) as e:
            raise ShardError(f"{self.path}: a compact cache reads each scan's own points from the dataset it was "
                             f"fused from, which cannot be read as it was ({e}); move the data back or fuse "
                             "again") from None
        if now != self.attrs.get("input_hash"):
            raise ShardError(f"{self.path}: the dataset it was fused from changed since `make fuse` (a scan, label, "
                             f"poses or calib file of {seq.path} was edited or replaced); a compact cache reads "
                             "the scans' own points from there: fuse again (m2skd-fuse rebuilds what changed)")

    def _own(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A compact shard's scan i: its own points, train ids and instances from the dataset."""
        from .kitti_io import Sequence  # common's reader; imported here to keep the schema module light
        from .labels import raw_to_train

        seq = Sequence(Path(self.attrs["data_root"]), str(self.attrs["sequence"]))
        frame = int(self.frames[i])
        if not seq.scan_path(frame).is_file():
            raise ShardError(f"{self.path}: a compact cache reads each scan's own points from the dataset it was "
                             f"fused from, and {seq.scan_path(frame)} is gone; move the data back or fuse again")
        pts, sem, inst = seq.read(frame)
        if len(pts) != int(self.n_original[i]):
            raise ShardError(f"{seq.scan_path(frame)}: {len(pts)} points, the shard fused {self.n_original[i]}; "
                             "the dataset changed since `make fuse`: fuse again")
        return pts, raw_to_train(sem, str(seq.label_path(frame))), inst

    def scan(self, i: int, view: str = "fused") -> FusedScan:
        """Scan i in a view; `single` reads only its original points (a prefix of its rows)."""
        check_view(view)
        if self.compact:
            return self._compact_scan(i, view)
        f = self._file()
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        if view == "single":
            b = a + int(self.n_original[i])
        try:
            return FusedScan(
                frame=int(self.frames[i]), points=f["points"][a:b], labels=f["labels"][a:b],
                instance=f["instance"][a:b], source=f["source"][a:b], n_original=int(self.n_original[i]),
            )
        except OSError as e:  # h5py's "filter returned failure" on damaged compressed data names no file
            raise ShardError(f"{self.path}: scan {i} cannot be read ({e}); the shard is damaged: rebuild it with "
                             "`m2skd-fuse` (make fuse)") from None

    def _compact_scan(self, i: int, view: str) -> FusedScan:
        pts, labels, inst = self._own(i)
        n = len(pts)
        if view == "single":
            return FusedScan(int(self.frames[i]), pts, labels, inst, np.zeros(n, np.int8), n)
        f = self._file()
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return FusedScan(int(self.frames[i]), np.concatenate([pts, f["points"][a:b]]),
                         np.concatenate([labels, f["labels"][a:b]]), np.concatenate([inst, f["instance"][a:b]]),
                         np.concatenate([np.zeros(n, np.int8), f["source"][a:b]]), n)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_f"] = None
        return state


def _attr(v):
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, str) and v[:1] in "[{":
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    return v.item() if isinstance(v, np.generic) else v
