"""S3 objects as a source (CDI's ``source.s3``), through botocore, with resume and ranges.

URL forms (CDI's ``source.s3.url``):

* ``s3://bucket/key`` - endpoint from ``options.s3_endpoint``, else AWS for the region;
* ``https://host[:port]/bucket/key`` and ``http://...`` - path-style, endpoint
  ``scheme://host[:port]``, bucket = first path segment (MinIO, Ceph RGW, SeaweedFS, ...);
* ``https://bucket.s3[.region].amazonaws.com/key`` (virtual-hosted AWS) and
  ``https://s3[.region].amazonaws.com/bucket/key`` (path-style AWS) - region from the host.

``?versionId=...`` pins an object version. Credentials are static (CDI's Secret keys
``accessKeyId``/``secretKey``); none means anonymous, unsigned requests - never the ambient
AWS credential chain, which a pod must not pick up by accident.

The object is pinned at :meth:`S3Source.open` by its ETag: every later GET carries
``If-Match``, so a resumed stream or a range can never splice two versions of the object
together; a replaced object raises :class:`SourceChanged`. botocore's own retries are off:
temporary faults are retried by :func:`~importer.sources.base.resuming_chunks`, which resumes
at the byte where the stream broke instead of starting over. A single GET stream is often
capped well below the bucket's speed: :meth:`S3Source.chunks` goes on with several ranged GETs
at once, delivered in order, where that measured faster (:mod:`.ranged`).
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from typing import Any, Iterator
from urllib.parse import parse_qs, unquote, urlsplit

import boto3  # type: ignore[import-untyped]
import botocore  # type: ignore[import-untyped]
import botocore.exceptions as bex  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]

from ..errors import (
    AuthenticationFailed,
    CdiImportError,
    SourceChanged,
    InvalidSource,
    PermanentError,
    SourceNotFound,
    SourceUnavailable,
)
from ..stream import CHUNK
from . import SourceOptions
from .base import Source, SourceInfo, redact, resuming_chunks, retry_after_seconds, retrying
from .guards import check_content_range
from .ranged import adaptive_chunks
from .tls import TrustBundle

log = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"
POOL_CONNECTIONS = 16
"""Enough for the stream plus a dozen concurrent :meth:`S3Source.read_at` callers."""
PART = 2 * 1024 * 1024
"""Bytes per ranged GET when reading with several connections: with four at once, 8 MiB in
flight at most (4 MiB parts peaked at 97 MiB on an S3 .raw.gz import, 2 MiB at 78)."""

_AWS_HOST = re.compile(
    r"^(?:(?P<bucket>.+)\.)?s3(?:[.-](?:dualstack\.)?(?P<region>[a-z]{2}(?:-[a-z]+)+-\d+))?"
    r"\.amazonaws\.com(?:\.cn)?$")

_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "NoSuchVersion", "NotFound", "404", "410"}
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
           "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem",
           "InvalidSecurity", "RequestTimeTooSkewed", "401", "403"}
_TEMPORARY = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling",
              "ThrottlingException", "RequestThrottled", "TooManyRequests",
              "BandwidthLimitExceeded", "OperationAborted"}
_CHANGED = {"PreconditionFailed", "InvalidRange", "412", "416"}
_WRONG_REGION = {"PermanentRedirect", "TemporaryRedirect", "AuthorizationHeaderMalformed",
                 "IllegalLocationConstraintException", "301", "307"}
_TRANSIENT_BOTO = (bex.EndpointConnectionError, bex.ConnectTimeoutError, bex.HTTPClientError,
                   bex.ProxyConnectionError, bex.IncompleteReadError, bex.ConnectionError)


@dataclass(frozen=True)
class S3Location:
    """Where an object lives, as learned from the URL."""

    bucket: str
    key: str
    endpoint: str | None
    """Endpoint URL; None for AWS (botocore derives it from the region)."""
    region: str | None
    """Region named by an AWS host name, if any."""
    path_style: bool
    """Force path-style addressing (every non-AWS endpoint)."""
    use_ssl: bool = True
    version_id: str | None = None


def _split_bucket_key(path: str, url: str) -> tuple[str, str]:
    bucket, _, key = path.lstrip("/").partition("/")
    if not bucket or not key:
        raise InvalidSource(f"S3 URL {url!r} must name a bucket and an object key (…/bucket/key)")
    return unquote(bucket), unquote(key)


def parse_s3_url(url: str, endpoint: str | None = None) -> S3Location:
    """Parse any accepted URL form; ``endpoint`` applies to ``s3://`` URLs only."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    versions = parse_qs(parts.query).get("versionId")
    version = versions[0] if versions else None
    if scheme == "s3":
        bucket = parts.netloc.rsplit("@", 1)[-1]
        bucket_key = _split_bucket_key(f"{bucket}{parts.path}", url)
        return S3Location(*bucket_key, endpoint=endpoint.rstrip("/") if endpoint else None,
                          region=None, path_style=endpoint is not None,
                          use_ssl=not (endpoint or "").lower().startswith("http://"),
                          version_id=version)
    if scheme not in ("http", "https") or not parts.hostname:
        raise InvalidSource(f"unsupported S3 URL {redact(url)!r}: expected s3://bucket/key or "
                            "http(s)://host/bucket/key")
    host = parts.hostname
    aws = _AWS_HOST.match(host)
    if aws:
        if aws.group("bucket"):  # virtual-hosted: the bucket is in the host name
            bucket, key = aws.group("bucket"), unquote(parts.path.lstrip("/"))
            if not key:
                raise InvalidSource(f"S3 URL {redact(url)!r} names no object key")
        else:
            bucket, key = _split_bucket_key(parts.path, redact(url))
        return S3Location(bucket, key, endpoint=None, region=aws.group("region"),
                          path_style=False, use_ssl=scheme == "https", version_id=version)
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    if ":" in host:  # IPv6 literal
        netloc = f"[{host}]" if parts.port is None else f"[{host}]:{parts.port}"
    bucket, key = _split_bucket_key(parts.path, redact(url))
    return S3Location(bucket, key, endpoint=f"{scheme}://{netloc}", region=None,
                      path_style=True, use_ssl=scheme == "https", version_id=version)





class S3Source(Source):
    """One S3 object, read as a stream (:meth:`chunks`) or by ranges (:meth:`read_at`)."""

    kind = "s3"

    def __init__(self, url: str, options: SourceOptions) -> None:
        self.url = url
        self.name = redact(url)
        self.options = options
        self.location = parse_s3_url(url, options.s3_endpoint)
        if (options.access_key_id is None) != (options.secret_key is None):
            raise InvalidSource("S3 credentials need both accessKeyId and secretKey")
        self.anonymous = options.access_key_id is None
        self.region = self.location.region or options.s3_region or DEFAULT_REGION
        self.size: int | None = None
        self.etag: str | None = None
        self.last_modified: Any = None
        self._client: Any = None
        self._bundle: TrustBundle | None = None
        self._lock = threading.Lock()

    # -- client ----------------------------------------------------------------------------

    @property
    def where(self) -> str:
        """The endpoint, for messages."""
        return self.location.endpoint or f"AWS S3 ({self.region})"

    @property
    def target(self) -> str:
        """The URL, plus the endpoint when the URL does not show it (``s3://``)."""
        if self.location.endpoint and self.name.startswith(self.location.endpoint):
            return self.name
        return f"{self.name} at {self.where}"

    def _verify(self) -> bool | str:
        if self.options.insecure:
            return False
        if self._bundle is None:
            self._bundle = TrustBundle.build(self.options.cert_dir, self.options.proxy_cert_dir)
        return str(self._bundle.path) if self._bundle else True

    def _make_client(self) -> Any:
        """A botocore client: no retries of its own, our timeouts, a pool for parallel reads."""
        verify = self._verify()
        policy = self.options.retry
        config = Config(
            region_name=self.region,
            signature_version=botocore.UNSIGNED if self.anonymous else "s3v4",
            s3={"addressing_style": "path" if self.location.path_style else "auto"},
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=policy.connect_timeout,
            read_timeout=policy.stall_timeout,
            max_pool_connections=POOL_CONNECTIONS,
            tcp_keepalive=True,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            proxies_config={"proxy_ca_bundle": verify} if isinstance(verify, str) else None,
        )
        session = boto3.session.Session()
        return session.client(
            "s3",
            endpoint_url=self.location.endpoint,
            use_ssl=self.location.use_ssl,
            verify=verify,
            aws_access_key_id=self.options.access_key_id,
            aws_secret_access_key=self.options.secret_key,
            config=config,
        )

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                try:
                    self._client = self._make_client()
                except ValueError as error:  # botocore: "Invalid endpoint: ..."
                    raise InvalidSource(f"S3 source {self.name}: {error}") from error
            return self._client

    def _object_args(self) -> dict[str, str]:
        args = {"Bucket": self.location.bucket, "Key": self.location.key}
        if self.location.version_id:
            args["VersionId"] = self.location.version_id
        return args

    def _pin_args(self) -> dict[str, Any]:
        """Conditions that make every GET refuse a different version of the object."""
        if self.etag:
            return {"IfMatch": self.etag}
        if self.last_modified is not None:
            return {"IfUnmodifiedSince": self.last_modified}
        return {}

    # -- Source ----------------------------------------------------------------------------

    def open(self) -> SourceInfo:
        """HEAD the object: its size and ETag, or a clear NotFound/Unauthorized error."""
        try:
            head = self.client.head_object(**self._object_args())
        except Exception as error:  # noqa: BLE001 - classified below
            classified = self._classify(error, "HEAD")
            if isinstance(error, bex.ClientError):
                classified = self._explain(classified)
            raise classified from error
        self.size = int(head["ContentLength"])
        self.etag = head.get("ETag")
        self.last_modified = head.get("LastModified")
        log.info("S3 object %s: %d bytes, ETag %s", self.target, self.size, self.etag)
        return SourceInfo(size=self.size, random_access=True, name=self.name)

    def chunks(self, start: int = 0) -> Iterator[bytes]:
        size = self._opened_size()
        if not 0 <= start <= size:
            raise ValueError(f"start {start} outside the object (size {size})")
        return adaptive_chunks(self._stream, self._range_pieces, start, size, PART, self.options.connections)

    def _stream(self, start: int) -> Iterator[bytes]:
        """One GET from ``start``, resumed after faults."""
        return resuming_chunks(self._stream_at, start, self.options.retry, self.name)

    def read_at(self, offset: int, length: int) -> bytes:
        size = self._opened_size()
        if length <= 0 or offset >= size:
            return b""
        end = min(offset + length, size) - 1
        return retrying(self.options.retry, f"{self.name} @{offset}", lambda: self._read_range(offset, end))

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
        if self._bundle is not None:
            self._bundle.close()
            self._bundle = None

    # -- data ------------------------------------------------------------------------------

    def _opened_size(self) -> int:
        if self.size is None:
            self.open()
        assert self.size is not None
        return self.size

    def _get(self, offset: int, end: int | None) -> Any:
        """A pinned, ranged GET; raises classified errors."""
        byte_range = f"bytes={offset}-" if end is None else f"bytes={offset}-{end}"
        try:
            response = self.client.get_object(Range=byte_range, **self._object_args(),
                                              **self._pin_args())
        except Exception as error:  # noqa: BLE001 - classified below
            raise self._classify(error, "GET") from error
        try:
            self._check_same_object(response, offset, end)
        except BaseException:
            response["Body"].close()
            raise
        return response

    def _check_same_object(self, response: dict[str, Any], offset: int, end: int | None) -> None:
        """Belt and braces for servers that ignore If-Match: compare ETag, range and size."""
        etag = response.get("ETag")
        if self.etag and etag and etag != self.etag:
            raise self._changed(f"its ETag went from {self.etag} to {etag}")
        content_range = response.get("ContentRange") or ""
        if not content_range and offset == 0 and end is None:
            return  # the whole object, answered as a plain 200
        check_content_range(content_range, offset, end if end is not None else None, self.size,
                            f"S3 object {self.target}")

    def _stream_at(self, offset: int, end: int | None = None) -> Iterator[bytes]:
        """The object from ``offset`` to ``end`` (inclusive; None: its end), as ~CHUNK pieces,
        over one connection."""
        size = self._opened_size()
        if offset >= size:
            return
        body = self._get(offset, end)["Body"]
        remaining = (size if end is None else end + 1) - offset
        try:
            while remaining > 0:
                chunk = body.read(min(CHUNK, remaining))
                if not chunk:
                    raise SourceUnavailable(
                        f"GET {self.name}: connection closed with {remaining} bytes to go")
                remaining -= len(chunk)
                yield chunk
        except (bex.BotoCoreError, OSError) as error:
            raise self._classify(error, "GET") from error
        finally:
            body.close()

    def _range_pieces(self, offset: int, length: int) -> Iterator[bytes]:
        """One range of a parallel read, as it arrives; a fault resumes at the next byte."""
        end = offset + length - 1
        return resuming_chunks(lambda at: self._stream_at(at, end), offset, self.options.retry, self.name)

    def _read_range(self, offset: int, end: int) -> bytes:
        body = self._get(offset, end)["Body"]
        try:
            data: bytes = body.read()
        except (bex.BotoCoreError, OSError) as error:
            raise self._classify(error, "GET") from error
        finally:
            body.close()
        if len(data) != end - offset + 1:
            raise SourceUnavailable(f"GET {self.name} bytes {offset}-{end}: got {len(data)} bytes")
        return data

    # -- errors ----------------------------------------------------------------------------

    def _changed(self, why: str) -> SourceChanged:
        return SourceChanged(f"S3 object {self.name} changed while it was being imported ({why}); "
                             "the import must start over")

    def _explain(self, head_error: CdiImportError) -> CdiImportError:
        """A HEAD error has no body, so no S3 error code ("403", "404"): repeat the request
        as a 1-byte GET, whose code says which of bucket/key is missing, or which part of
        the credentials is wrong. Keep the HEAD's error if the GET tells nothing better."""
        try:
            self.client.get_object(Range="bytes=0-0", **self._object_args())["Body"].close()
        except bex.ClientError as error:
            detailed = self._classify(error, "HEAD")
            if type(detailed) is type(head_error):
                return detailed
        except Exception:  # noqa: BLE001 - only an explanation; keep the first error
            pass
        return head_error

    def _missing_key_message(self) -> str:
        what = f"object {self.location.key!r}"
        if self.location.version_id:
            what = f"version {self.location.version_id!r} of {what}"
        return f"S3 {what} not found in bucket {self.location.bucket!r} at {self.where}"

    def _classify(self, error: Exception, action: str) -> CdiImportError:
        """Turn a botocore/urllib3/socket failure into the importer's error vocabulary."""
        if isinstance(error, CdiImportError):
            return error
        if isinstance(error, bex.ClientError):
            return self._classify_response(error, action)
        if isinstance(error, bex.SSLError):
            text = str(error)
            if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text \
                    or "hostname" in text.lower():
                return AuthenticationFailed(
                    f"TLS verification of {self.where} failed: {text}. Provide the endpoint's CA "
                    "(certConfigMap / --cert-dir) or set insecureSkipVerify", reason="TLSError")
            return SourceUnavailable(f"{action} {self.name}: TLS error: {text}")
        if isinstance(error, (bex.NoCredentialsError, bex.PartialCredentialsError,
                              bex.ParamValidationError, bex.NoRegionError,
                              bex.InvalidRegionError)):
            return InvalidSource(f"S3 source {self.name}: {error}")
        if isinstance(error, (*_TRANSIENT_BOTO, OSError)):
            return SourceUnavailable(f"{action} {self.target}: {error}")
        if isinstance(error, bex.BotoCoreError):
            return SourceUnavailable(f"{action} {self.target}: {error}")
        return PermanentError(f"{action} {self.target}: unexpected "
                              f"{type(error).__name__}: {error}")

    def _classify_response(self, error: bex.ClientError, action: str) -> CdiImportError:
        details = error.response.get("Error", {})
        meta = error.response.get("ResponseMetadata", {})
        status = int(meta.get("HTTPStatusCode") or 0)
        headers = meta.get("HTTPHeaders", {})
        code = str(details.get("Code") or status)
        message = details.get("Message") or ""
        said = f"{code}: {message}" if message and message != code else code
        if code in _CHANGED or status in (412, 416):
            return self._changed("If-Match/Range refused" if code != "InvalidRange"
                                 else "it is shorter than when opened")
        if code in _NOT_FOUND or status in (404, 410):
            if code == "NoSuchBucket":
                return SourceNotFound(f"S3 bucket {self.location.bucket!r} does not exist at "
                                      f"{self.where}")
            return SourceNotFound(self._missing_key_message())
        if code in _DENIED or status in (401, 403):
            return AuthenticationFailed(self._denied_message(code, said))
        if code in _WRONG_REGION or status in (301, 307):
            region = headers.get("x-amz-bucket-region")
            hint = f"; the bucket is in region {region!r}" if region else ""
            return InvalidSource(f"{action} {self.name}: wrong region or endpoint "
                                 f"({said}; asked {self.region}){hint}")
        if code in _TEMPORARY or status >= 500 or status == 429:
            retry_after = retry_after_seconds(headers.get("retry-after"))
            return SourceUnavailable(f"{action} {self.target}: {said} "
                                     f"(HTTP {status})", retry_after=retry_after)
        return PermanentError(f"{action} {self.target} failed: {said} (HTTP {status})")

    def _denied_message(self, code: str, said: str) -> str:
        target = f"S3 object {self.target}"
        if self.anonymous:
            return (f"access to {target} denied to an anonymous request ({said}); give "
                    "credentials (a Secret with accessKeyId and secretKey)")
        if code == "InvalidAccessKeyId":
            return f"access to {target} denied: the server does not know accessKeyId ({said})"
        if code == "SignatureDoesNotMatch":
            return (f"access to {target} denied: secretKey does not match accessKeyId, or the "
                    f"request was altered ({said})")
        return f"access to {target} denied ({said}); check the credentials and bucket policy"

