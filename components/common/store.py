"""The artifact store: one interface over a local folder and an S3 prefix.

Stages keep here what must outlive a pod: the model download cache, teacher results written in shards,
the cross-run teacher cache, training checkpoints and TensorBoard logs. Keys are '/'-separated paths
relative to the store's root. Every write is atomic: a reader never sees half an object.

    store = open_store("s3://bucket/distill")      # or open_store("/data/distill")
    run = store.child("runs/<run id>")
    run.write_text("teacher/shard-00000.jsonl", "...")

S3 is reached through boto3, so the usual variables apply: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_DEFAULT_REGION and AWS_ENDPOINT_URL (MinIO, SeaweedFS, a loopback server in tests).

Bucket contents may be written by others, so a key is only ever a relative path: a key with a '.' or
'..' part, or an absolute one, is refused, and every object copied into a local folder must land inside
it (`path_under`). `create` and `replace` are conditional writes (S3 If-None-Match / If-Match; a folder
lock locally) for the few objects that several processes contend for, such as leases.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from components.common.errors import InputError


class ArtifactStore(ABC):
    """A tree of named objects; subclasses map keys to files or S3 objects."""

    uri: str

    @abstractmethod
    def child(self, prefix: str) -> ArtifactStore:
        """A store rooted at `prefix` below this one."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def read_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys of all objects under `prefix`, relative to this store, sorted."""

    @abstractmethod
    def delete(self, prefix: str) -> None:
        """Remove the object `prefix` or every object under it."""

    @abstractmethod
    def upload_file(self, local: Path, key: str) -> None: ...

    @abstractmethod
    def create(self, key: str, data: bytes) -> str | None:
        """Write `key` only if no object has that name; its tag (see `read_tagged`), or None if one does."""

    @abstractmethod
    def read_tagged(self, key: str) -> tuple[bytes, str]:
        """The object and a tag that changes with every write (for `replace`)."""

    @abstractmethod
    def replace(self, key: str, data: bytes, tag: str) -> str | None:
        """Overwrite `key` only if it still holds the write tagged `tag`; the new tag, or None."""

    @abstractmethod
    def download_file(self, key: str, local: Path) -> None: ...

    def read_text(self, key: str) -> str:
        return self.read_bytes(key).decode("utf-8")

    def write_text(self, key: str, text: str) -> None:
        self.write_bytes(key, text.encode("utf-8"))

    def upload_dir(self, local_dir: Path, prefix: str) -> None:
        """Copy every file under `local_dir` to `prefix/<relative path>`."""
        for path in sorted(Path(local_dir).rglob("*")):
            if path.is_file():
                self.upload_file(path, _join(prefix, path.relative_to(local_dir).as_posix()))

    def download_dir(self, prefix: str, local_dir: Path) -> None:
        """Copy every object under `prefix` into `local_dir`, keeping relative paths."""
        keys = self.list(prefix)
        if not keys:
            raise InputError(f"nothing stored under {self.uri}/{prefix}")
        for key in keys:
            if key.endswith("/"):
                continue  # a folder placeholder some S3 consoles create: no file to copy
            relative = key[len(prefix) :].lstrip("/") if prefix else key
            self.download_file(key, path_under(Path(local_dir), relative))


def check_key(key: str) -> str:
    """`key` itself when it is a relative '/'-separated path without '.' or '..' parts; else InputError."""
    parts = key.split("/")
    if key.startswith("/") or any(part in (".", "..") for part in parts):
        raise InputError(
            f"store key {key!r} is absolute or has a '.' or '..' part; keys are paths relative to the "
            "store's root (an object named so was not written by this project: remove it)"
        )
    return key


def path_under(root: Path, relative: str) -> Path:
    """`root/relative`, refused with InputError unless it resolves inside `root` (no '..', no symlink out)."""
    root = Path(root).resolve()
    path = (root / relative).resolve()
    if relative.startswith("/") or not path.is_relative_to(root) or path == root:
        raise InputError(
            f"{relative!r} would be written outside {root}; an object or file name with '..' or an "
            "absolute path is refused (it was not written by this project: remove it)"
        )
    return path


def file_digest(path: Path) -> str:
    """sha256 of a local file, read in 1 MiB blocks: what markers record to check copies against."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive flock on `folder` itself: serialises the conditional writes of processes on one disk."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class LocalStore(ArtifactStore):
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return path_under(self.root, check_key(key)) if key else self.root

    def child(self, prefix: str) -> LocalStore:
        return LocalStore(self._path(prefix))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.uri}/{key} does not exist") from None

    def write_bytes(self, key: str, data: bytes) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".tmp-", delete=False) as tmp:
            tmp.write(data)
        os.replace(tmp.name, target)

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix)
        if base.is_file():
            return [prefix]
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-")
        )

    def delete(self, prefix: str) -> None:
        path = self._path(prefix)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

    def upload_file(self, local: Path, key: str) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        # A name of its own: two processes uploading the same key must not write into one temporary file.
        tmp = target.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{target.name}")
        shutil.copyfile(local, tmp)
        os.replace(tmp, target)

    def download_file(self, key: str, local: Path) -> None:
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._path(key), local)

    def create(self, key: str, data: bytes) -> str | None:
        target = self._path(key)
        with _folder_lock(target.parent):
            if target.exists():
                return None
            self.write_bytes(key, data)
        return hashlib.sha256(data).hexdigest()

    def read_tagged(self, key: str) -> tuple[bytes, str]:
        data = self.read_bytes(key)
        return data, hashlib.sha256(data).hexdigest()

    def replace(self, key: str, data: bytes, tag: str) -> str | None:
        target = self._path(key)
        with _folder_lock(target.parent):
            if not target.exists() or hashlib.sha256(target.read_bytes()).hexdigest() != tag:
                return None
            self.write_bytes(key, data)
        return hashlib.sha256(data).hexdigest()


_CLIENT_LOCK = threading.Lock()


class S3Store(ArtifactStore):
    def __init__(self, bucket: str, prefix: str = "", client=None):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self._client = client

    @property
    def client(self):
        # Stores are used from worker threads; two threads creating clients at once would each keep
        # their own, and an error raised by one client is not the other's `exceptions.NoSuchKey`.
        with _CLIENT_LOCK:
            if self._client is None:
                import boto3

                # boto3 reads AWS_ENDPOINT_URL itself; credentials come from the environment.
                self._client = boto3.client("s3")
        return self._client

    def _key(self, key: str) -> str:
        return _join(self.prefix, check_key(key))

    def child(self, prefix: str) -> S3Store:
        return S3Store(self.bucket, _join(self.prefix, prefix), client=self._client)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def read_bytes(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as error:
            # By code, not by `client.exceptions.NoSuchKey`: botocore builds those classes lazily, and two
            # threads meeting their first error at once can get two different classes for one client.
            if error.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
                raise
            raise FileNotFoundError(f"{self.uri}/{key} does not exist") from None

    def write_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def list(self, prefix: str = "") -> list[str]:
        full = self._key(prefix)
        paginator = self.client.get_paginator("list_objects_v2")
        keys = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            for item in page.get("Contents", []):
                key = item["Key"]
                # A prefix "a/b" must not match the sibling "a/bc".
                if key == full or not full or key.startswith(full + "/"):
                    keys.append(key[len(self.prefix) :].lstrip("/") if self.prefix else key)
        return sorted(keys)

    def delete(self, prefix: str) -> None:
        keys = self.list(prefix)
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch})

    def upload_file(self, local: Path, key: str) -> None:
        self.client.upload_file(str(local), self.bucket, self._key(key))

    def download_file(self, key: str, local: Path) -> None:
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        self.client.download_file(self.bucket, self._key(key), str(local))

    def create(self, key: str, data: bytes) -> str | None:
        return self._put_if(key, data, IfNoneMatch="*")

    def read_tagged(self, key: str) -> tuple[bytes, str]:
        from botocore.exceptions import ClientError

        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
                raise
            raise FileNotFoundError(f"{self.uri}/{key} does not exist") from None
        return reply["Body"].read(), reply["ETag"]

    def replace(self, key: str, data: bytes, tag: str) -> str | None:
        return self._put_if(key, data, IfMatch=tag)

    def _put_if(self, key: str, data: bytes, **condition: str) -> str | None:
        from botocore.exceptions import ClientError

        try:
            reply = self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **condition)
        except ClientError as error:
            # 412: the condition failed; 409: a concurrent conditional write to the same key won.
            code = error.response.get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "404"):
                return None
            raise
        return reply["ETag"]


def open_store(uri: str) -> ArtifactStore:
    """Open `s3://bucket/prefix` or a local folder (created if missing)."""
    if not uri:
        raise InputError("store_uri is empty: give a local folder or s3://bucket/prefix")
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        if not bucket:
            raise InputError(f"store_uri {uri!r} names no bucket: use s3://bucket/prefix")
        return S3Store(bucket, prefix)
    if "://" in uri:
        raise InputError(f"store_uri {uri!r}: only local folders and s3://bucket/prefix are supported")
    Path(uri).expanduser().mkdir(parents=True, exist_ok=True)
    return LocalStore(uri)
