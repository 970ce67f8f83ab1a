"""The live file store: Cloudflare R2 through its S3 API (boto3, imported on first use).

R2 speaks S3 with region `auto` and signature v4, but rejects the CRC checksums that recent
boto3 adds to every upload by default, hence `when_required` (a setting boto3 knows since
1.36: older versions refuse it with a TypeError, reported here as a clear error).

The links it hands out last as long as the file: the public bucket URL when one is configured
(`R2_PUBLIC_URL`), else a link through this project's server (`HANDLER_PUBLIC_URL/files/...`,
signed; see `links.py`) that sends each click to a presigned URL made at that moment. A
presigned URL written somewhere would die within seven days, so with neither setting the
store refuses to start and says what to set. `doctor --check` proves the credentials with
what a bucket-scoped "Object Read & Write" token may do: list one key, write and delete a
probe object (not HeadBucket, which such a token may not do).
"""

from __future__ import annotations

import secrets
import threading
import unicodedata
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from handler_cli.checks import Finding, missing, proved
from handler_cli.config import ConfigError
from handler_cli.services import ServiceError
from handler_cli.services.files import request_prefix
from handler_cli.services.files.links import FileLinks

if TYPE_CHECKING:
    from handler_cli.config import Settings

# SigV4 presigned URLs cannot live longer than seven days; R2 refuses anything longer.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
PROBE_PREFIX = "handler-cli-doctor/"  # where `doctor --check` writes (and deletes) its probe
# ListObjectsV2 returns at most 1,000 keys a page and DeleteObjects takes at most 1,000 keys
# (S3's limits, which R2 keeps): a request's objects are erased a page at a time.
MAX_KEYS = 1000
# Error codes worth trying again later, whatever their HTTP status.
TRANSIENT_CODES = frozenset(
    {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling",
     "TooManyRequests", "RequestTimeTooSkewed"}
)


class R2FileStore:
    """Uploads attachments to one R2 bucket and returns a link the team can open."""

    name = "r2"

    def __init__(
        self,
        settings: Settings,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_attempts: int = 3,
    ) -> None:
        """Timeouts and attempts are arguments so tests can make a dead endpoint fail fast."""
        if not settings.r2_bucket:
            raise ValueError("R2_BUCKET is required for the R2 file store")
        if not (settings.r2_endpoint_url or settings.r2_account_id):
            raise ValueError("R2_ACCOUNT_ID or R2_ENDPOINT_URL is required for the R2 file store")
        self.bucket: str = settings.r2_bucket
        self.endpoint_url: str = (
            settings.r2_endpoint_url or f"https://{settings.r2_account_id}.r2.cloudflarestorage.com"
        ).rstrip("/")
        self.public_url = (settings.r2_public_url or "").rstrip("/") or None
        self.links = None if self.public_url else FileLinks.from_settings(settings)
        if self.public_url is None and self.links is None:
            raise ConfigError(
                "R2: the links written to tickets, e-mails and subtasks must open the files "
                "for as long as they exist, and presigned URLs die within 7 days: set "
                "R2_PUBLIC_URL (a public bucket or custom domain) or HANDLER_PUBLIC_URL (links "
                "through this server's /files/, signed)")
        self._settings = settings
        self.presign_seconds = max(1, min(settings.r2_presign_seconds, MAX_PRESIGN_SECONDS))
        self._access_key_id = settings.r2_access_key_id
        self._secret_access_key = settings.r2_secret_access_key
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_attempts = max_attempts
        self.page_size = MAX_KEYS  # keys listed (and deleted) at a time; tests make it small
        self._client: Any = None
        self._lock = threading.Lock()

    def describe(self) -> str:
        links = (f"public links under {self.public_url}" if self.public_url
                 else f"lasting links through {self.links.base_url if self.links else '?'}"
                 "/files/")
        return f"R2 bucket {self.bucket} at {self.endpoint_url} ({links})"

    def put(self, key: str, data: bytes, content_type: str) -> str:
        """Upload (overwriting the same key is harmless: same request, same file)."""
        if not key or key.startswith("/"):
            raise ValueError(f"unsafe storage key {key!r}")
        try:
            self._get_client().put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=content_type or "application/octet-stream",
                ContentDisposition=content_disposition(key.rsplit("/", 1)[-1]),
            )
        except Exception as exc:
            raise self._translate(exc, f"upload of {key}") from None
        return self.link(key)

    def erase_request(self, request_id: str, *, dry_run: bool = False) -> int:
        """Delete every object under `requests/<request id>/` (retention, the right to
        erasure); how many. A page of keys is listed (ListObjectsV2), then deleted in one
        DeleteObjects call; a key the bucket refused to delete fails the erasure (the
        ServiceError says how many), and running it again erases what is left.

        R2 implements ListObjectsV2 (prefix, continuation-token, max-keys) and DeleteObjects
        (Cloudflare, "S3 API compatibility", developers.cloudflare.com/r2/api/s3/api/, read
        29 Nov 2026). DeleteObjects must carry one integrity header: boto3 >= 1.36 sends a
        CRC32 one (x-amz-checksum-crc32) even with `request_checksum_calculation=
        when_required`, and no Content-MD5; R2 accepts it, and refuses two at once, so none
        is added here (tests/test_r2_erase.py holds the request to exactly one)."""
        prefix = request_prefix(request_id)
        count = 0
        token: str | None = None
        while True:
            try:
                client = self._get_client()
                page = client.list_objects_v2(
                    Bucket=self.bucket, Prefix=prefix, MaxKeys=self.page_size,
                    **({"ContinuationToken": token} if token else {}))
                keys = [str(item["Key"]) for item in page.get("Contents", [])]
                refused = [] if dry_run or not keys else client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True},
                ).get("Errors", [])
            except Exception as exc:
                raise self._translate(exc, f"erasing {prefix}") from None
            count += len(keys) - len(refused)
            if refused:
                code = str(refused[0].get("Code", "?"))
                reason = f"{code} {refused[0].get('Message', '')}".strip()
                raise ServiceError("r2", f"erasing {prefix}: {len(refused)} object(s) not "
                                   f"deleted ({reason}); {count} deleted",
                                   transient=code in TRANSIENT_CODES)
            token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
            if not token:
                return count

    def link(self, key: str) -> str:
        """A link to `key` that lasts as long as the file: public, or through our server."""
        if self.public_url:
            return f"{self.public_url}/{quote(key, safe='/')}"
        assert self.links is not None
        return self.links.url(key)

    def presigned(self, key: str, seconds: int | None = None) -> str:
        """A presigned GET URL (seven days at most): for a click, never to be written down."""
        expires = max(1, min(seconds or self.presign_seconds, MAX_PRESIGN_SECONDS))
        try:
            url: str = self._get_client().generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires)
        except Exception as exc:
            raise self._translate(exc, f"signing a link to {key}") from None
        return url

    def fresh_link(self, key: str, seconds: int) -> str | None:
        """A presigned URL made now, or None when the file is no longer there."""
        try:
            self._get_client().head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            error = self._translate(exc, f"looking up {key}")
            status = getattr(exc, "response", {}).get("ResponseMetadata", {}).get(
                "HTTPStatusCode")
            if status == 404:
                return None
            raise error from None
        return self.presigned(key, seconds)

    def check(self) -> list[Finding]:
        """What a bucket-scoped "Object Read & Write" token may do, proved: list one key,
        write then delete a probe object; and where the links written down will point."""
        client = None
        try:
            client = self._get_client()
            client.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
        except Exception as exc:
            raise self._translate(exc, "listing the bucket") from None
        found = [proved(f"bucket {self.bucket} at {self.endpoint_url}: objects can be listed")]
        probe = f"{PROBE_PREFIX}{secrets.token_hex(8)}"
        try:
            client.put_object(Bucket=self.bucket, Key=probe, Body=b"handler-cli doctor")
            client.delete_object(Bucket=self.bucket, Key=probe)
            found.append(proved(f"bucket {self.bucket}: objects can be written and deleted "
                                f"(probe {probe}, deleted)"))
        except Exception as exc:
            found.append(missing(f"{self._translate(exc, 'writing a probe object')} — the token "
                                 "needs Object Read & Write on this bucket"))
        found.append(self._links_finding())
        return found

    def _links_finding(self) -> Finding:
        if self.public_url:
            return proved(f"links to files are public: {self.public_url}/<key>")
        assert self.links is not None
        if not self._settings.handler_file_link_secret:
            return missing(
                f"links to files go through {self.links.base_url}/files/, signed with a secret "
                f"generated in {self._settings.data_dir}; set HANDLER_FILE_LINK_SECRET to its "
                "value (the same on every node) so the links already written outlive this data "
                "dir")
        return proved(f"links to files go through {self.links.base_url}/files/ (signed with "
                      "HANDLER_FILE_LINK_SECRET; each click gets a fresh presigned URL)")

    # -- internals -------------------------------------------------------------------------

    def _get_client(self) -> Any:
        """One boto3 client per store, built on first use (boto3 costs start-up time).
        Callers build it inside their error handling: a failure here is a ServiceError."""
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                try:
                    config = self._config(Config)
                except TypeError as exc:  # botocore without the checksum settings (< 1.36)
                    raise ServiceError(
                        "r2", f"boto3 {boto3.__version__} cannot set the checksum behaviour R2 "
                        f"needs ({exc}): install boto3>=1.36", transient=False) from None
                # A private session: boto3's default one is not safe to share between threads.
                self._client = boto3.session.Session().client(
                    "s3",
                    endpoint_url=self.endpoint_url,
                    aws_access_key_id=self._access_key_id,
                    aws_secret_access_key=self._secret_access_key,
                    config=config,
                )
            return self._client

    def _config(self, config_class: Any) -> Any:
        return config_class(
            region_name="auto",
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            retries={"max_attempts": self.max_attempts, "mode": "standard"},
        )

    def _translate(self, exc: Exception, action: str) -> Exception:
        """A botocore failure as a ServiceError; anything else is a bug and goes through."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            HTTPClientError,
            NoCredentialsError,
        )
        from botocore.exceptions import ConnectionError as BotoConnectionError

        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "?"))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code in {"NoSuchBucket"} or (status == 404 and action == "listing the bucket"):
                message = f"{action}: bucket {self.bucket} not found at {self.endpoint_url}"
            elif code in {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
                message = (
                    f"{action}: access to bucket {self.bucket} denied ({code}); "
                    "check R2_ACCESS_KEY_ID and R2_SECRET_ACCESS_KEY"
                )
            else:
                message = f"{action} failed: {code} {error.get('Message', '')}".rstrip()
                if status:
                    message += f" (HTTP {status})"
            transient = status >= 500 or status in {408, 429} or code in TRANSIENT_CODES
        elif isinstance(exc, BotoConnectionError | HTTPClientError):
            message = f"{action} failed: {exc}"
            transient = True
        elif isinstance(exc, NoCredentialsError):
            message = f"{action}: no credentials (set R2_ACCESS_KEY_ID and R2_SECRET_ACCESS_KEY)"
            transient = False
        elif isinstance(exc, BotoCoreError):
            message = f"{action} failed: {exc}"
            transient = False
        else:
            return exc
        if self._secret_access_key:
            message = message.replace(self._secret_access_key, "***")
        return ServiceError("r2", message, transient=transient)


def content_disposition(filename: str) -> str:
    """`inline` with the original name: an ASCII fallback plus the exact UTF-8 name (RFC 6266)."""
    ascii_name = (
        unicodedata.normalize("NFKD", filename).encode("ascii", "ignore").decode("ascii")
    )
    ascii_name = "".join(c for c in ascii_name if c.isprintable() and c not in '"\\') or "file"
    return f"inline; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"
