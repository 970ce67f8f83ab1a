"""The live file store: Cloudflare R2 through its S3 API (boto3, imported on first use).

R2 speaks S3 with region `auto` and signature v4, but rejects the CRC checksums that recent
boto3 adds to every upload by default, hence `when_required`. Links are the public bucket
URL when one is configured, else a presigned GET URL (R2 buckets are private by default).
"""

from __future__ import annotations

import threading
import unicodedata
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from handler_cli.checks import Finding, proved
from handler_cli.services import ServiceError

if TYPE_CHECKING:
    from handler_cli.config import Settings

# SigV4 presigned URLs cannot live longer than seven days; R2 refuses anything longer.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
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
        self.presign_seconds = max(1, min(settings.r2_presign_seconds, MAX_PRESIGN_SECONDS))
        self._access_key_id = settings.r2_access_key_id
        self._secret_access_key = settings.r2_secret_access_key
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_attempts = max_attempts
        self._client: Any = None
        self._lock = threading.Lock()

    def describe(self) -> str:
        links = (
            f"public links under {self.public_url}" if self.public_url
            else f"presigned links valid {self.presign_seconds} s"
        )
        return f"R2 bucket {self.bucket} at {self.endpoint_url} ({links})"

    def put(self, key: str, data: bytes, content_type: str) -> str:
        """Upload (overwriting the same key is harmless: same request, same file)."""
        if not key or key.startswith("/"):
            raise ValueError(f"unsafe storage key {key!r}")
        client = self._get_client()
        try:
            client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=content_type or "application/octet-stream",
                ContentDisposition=content_disposition(key.rsplit("/", 1)[-1]),
            )
        except Exception as exc:
            raise self._translate(exc, f"upload of {key}") from None
        return self.link(key)

    def link(self, key: str) -> str:
        """The public URL of `key`, or a presigned GET URL when the bucket is private."""
        if self.public_url:
            return f"{self.public_url}/{quote(key, safe='/')}"
        try:
            url: str = self._get_client().generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": key},
                ExpiresIn=self.presign_seconds,
            )
        except Exception as exc:
            raise self._translate(exc, f"signing a link to {key}") from None
        return url

    def check(self) -> list[Finding]:
        """HEAD the bucket: proves the endpoint answers and the keys may use the bucket."""
        try:
            self._get_client().head_bucket(Bucket=self.bucket)
        except Exception as exc:
            raise self._translate(exc, "bucket check") from None
        return [proved(f"bucket {self.bucket} reachable at {self.endpoint_url}")]

    # -- internals -------------------------------------------------------------------------

    def _get_client(self) -> Any:
        """One boto3 client per store, built on first use (boto3 costs start-up time)."""
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                config = Config(
                    region_name="auto",
                    signature_version="s3v4",
                    s3={"addressing_style": "path"},
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                    connect_timeout=self.connect_timeout,
                    read_timeout=self.read_timeout,
                    retries={"max_attempts": self.max_attempts, "mode": "standard"},
                )
                # A private session: boto3's default one is not safe to share between threads.
                self._client = boto3.session.Session().client(
                    "s3",
                    endpoint_url=self.endpoint_url,
                    aws_access_key_id=self._access_key_id,
                    aws_secret_access_key=self._secret_access_key,
                    config=config,
                )
            return self._client

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
            if code in {"NoSuchBucket", "404"} or (status == 404 and action == "bucket check"):
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
