"""The S3 writer: a multipart upload that becomes an object only on CompleteMultipartUpload, aborted on any error."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

from mgdata.storage.base import ObjectWriter


class S3MultipartWriter(ObjectWriter):
    """Buffers `part_size` bytes at a time and uploads parts from a small thread pool (bounded memory).

    Objects smaller than one part go up in a single PutObject; nothing exists under the key until commit. `store` is
    the `S3Store` it writes to (its client, bucket, part size, `call` and `full_key`); it is not imported here, so
    the store and its writer stay a one-way pair of modules.
    """

    def __init__(self, store, key: str):
        self._store = store
        self._key = key
        self._buf = bytearray()
        self._upload_id: str | None = None
        self._parts: list[Future] = []
        self._pool: ThreadPoolExecutor | None = None
        self._slots = threading.BoundedSemaphore(store.max_concurrency + 1)
        self.bytes_written = 0

    def write(self, data: bytes) -> int:
        self._buf += data
        self.bytes_written += len(data)
        while len(self._buf) >= self._store.part_size:
            part = bytes(self._buf[: self._store.part_size])
            del self._buf[: self._store.part_size]
            self._submit(part)
        return len(data)

    def _submit(self, body: bytes) -> None:
        s = self._store
        if self._upload_id is None:
            resp = s.call(
                "CreateMultipartUpload",
                self._key,
                s.client.create_multipart_upload,
                Bucket=s.bucket,
                Key=s.full_key(self._key),
            )
            self._upload_id = resp["UploadId"]
            self._pool = ThreadPoolExecutor(s.max_concurrency, thread_name_prefix="s3-part")
        number = len(self._parts) + 1
        self._slots.acquire()  # back-pressure: at most max_concurrency+1 parts in memory

        def upload() -> dict:
            try:
                r = s.call(
                    "UploadPart",
                    self._key,
                    s.client.upload_part,
                    Bucket=s.bucket,
                    Key=s.full_key(self._key),
                    UploadId=self._upload_id,
                    PartNumber=number,
                    Body=body,
                )
                return {"PartNumber": number, "ETag": r["ETag"]}
            finally:
                self._slots.release()

        self._parts.append(self._pool.submit(upload))

    def commit(self) -> None:
        s = self._store
        if self._upload_id is None:
            s.put_bytes(self._key, bytes(self._buf))
            return
        try:
            if self._buf or not self._parts:
                self._submit(bytes(self._buf))
                self._buf.clear()
            parts = [f.result() for f in self._parts]
            s.call(
                "CompleteMultipartUpload",
                self._key,
                s.client.complete_multipart_upload,
                Bucket=s.bucket,
                Key=s.full_key(self._key),
                UploadId=self._upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            self.abort()
            raise
        finally:
            self._pool.shutdown(wait=True)

    def abort(self) -> None:
        self._buf.clear()
        if self._upload_id is None:
            return
        for f in self._parts:
            f.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        try:
            self._store.client.abort_multipart_upload(
                Bucket=self._store.bucket, Key=self._store.full_key(self._key), UploadId=self._upload_id
            )
        except Exception:  # best effort: a lifecycle rule or the next retry cleans what is left
            pass
        self._upload_id = None
