"""The daemon's data directory: manifest, single-instance lock, and where everything lives.

    DIR/                     0700
      DATADIR.json           {"format": "shardlog-datadir", "format_version": 1, "shards": N}
      daemon.lock            flock()ed by the running coordinator (second `serve` is refused)
      shardlog.sock          the coordinator's socket (or elsewhere, recorded in socket.path,
                             when DIR is too long for a unix socket path)
      shards/0 .. shards/N-1 one store per shard (storage.layout)
      run/                   the shards' sockets (a short /tmp dir instead when DIR is long)

The shard count is fixed when the data dir is created: routing depends on it, so starting with
another count is refused instead of silently misplacing records.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from coordinator.config import MAX_SOCKET_PATH, SOCKET_POINTER, ConfigError, short_runtime_dir
from storage.env import make_private_dir, take_owner_lock
from storage.errors import FormatMismatch

FORMAT_NAME = "shardlog-datadir"
FORMAT_VERSION = 1
MANIFEST = "DATADIR.json"
LOCK = "daemon.lock"


@dataclass(frozen=True)
class DataDir:
    path: Path
    shards: int
    lock_fd: int
    socket_path: Path
    run_dir: Path

    def shard_dir(self, shard_id: int) -> Path:
        return self.path / "shards" / str(shard_id)

    def shard_socket(self, shard_id: int) -> Path:
        return self.run_dir / f"shard-{shard_id}.sock"

    def release(self) -> None:
        try:
            os.close(self.lock_fd)
        except OSError:
            pass


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except ValueError as exc:
        raise FormatMismatch(f"{path / MANIFEST} is not valid JSON ({exc}); restore it or use another --data-dir") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise FormatMismatch(f"{path} is not a shardlog data dir; use another --data-dir")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise FormatMismatch(f"{path} has data dir format {version!r}; this shardlog reads format {FORMAT_VERSION}")
    shards = manifest.get("shards")
    if not isinstance(shards, int) or shards < 1:
        raise FormatMismatch(f"{path / MANIFEST} has an invalid shard count {shards!r}")
    return manifest


def open_datadir(path: Path, requested_shards: int | None, socket_override: Path | None = None) -> DataDir:
    """Create or open the data dir and take its lock (StoreLocked if another daemon runs on it)."""
    path = path.expanduser().absolute()
    make_private_dir(path)
    lock_fd = take_owner_lock(path, LOCK, busy="another shardlog daemon (pid {pid}) is already serving "
                                                       "{directory}; stop it first, or use another --data-dir")
    try:
        if (path / MANIFEST).exists():
            shards = _read_manifest(path)["shards"]
            if requested_shards is not None and requested_shards != shards:
                raise ConfigError(f"{path} was created with {shards} shards; --shards {requested_shards} would "
                                  f"misroute its records; start with --shards {shards} (or omit --shards), or use "
                                  "a new --data-dir")
        else:
            if any(path.iterdir()) and not (set(os.listdir(path)) <= {LOCK, SOCKET_POINTER}):
                raise FormatMismatch(f"{path} is not empty and is not a shardlog data dir; use an empty or new --data-dir")
            shards = requested_shards or os.cpu_count() or 1
            tmp = path / (MANIFEST + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump({"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "shards": shards}, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path / MANIFEST)
        make_private_dir(path / "shards")
        socket_path = socket_override or _choose_socket(path)
        run_dir = path / "run"
        if len(os.fsencode(str(run_dir / "shard-999.sock"))) > MAX_SOCKET_PATH:
            run_dir = short_runtime_dir(path) / "run"
        make_private_dir(run_dir)
        make_private_dir(socket_path.parent)
        return DataDir(path, shards, lock_fd, socket_path, run_dir)
    except BaseException:
        os.close(lock_fd)
        raise


def _choose_socket(path: Path) -> Path:
    pointer = path / SOCKET_POINTER
    direct = path / "shardlog.sock"
    if len(os.fsencode(str(direct))) <= MAX_SOCKET_PATH:
        try:
            pointer.unlink()
        except FileNotFoundError:
            pass
        return direct
    target = short_runtime_dir(path) / "shardlog.sock"
    pointer.write_text(str(target))
    os.chmod(pointer, 0o600)
    return target


