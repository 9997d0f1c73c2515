"""One import described by :class:`~importer.settings.PodSettings`, start to end.

Shared by the pod entrypoint (``python -m importer``) and the upload server later: it turns
settings into a source, a target and options, runs the pipeline (or creates a blank disk),
and returns the result.
"""

from __future__ import annotations

from .checksum import Checksum
from .pipeline import ImportOptions, ImportResult, create_blank, run_import
from .progress import Progress
from .settings import PodSettings
from .sources import RetryPolicy, SourceOptions, open_source
from .target import TargetSpec


def source_options(settings: PodSettings) -> SourceOptions:
    return SourceOptions(
        access_key_id=settings.access_key_id, secret_key=settings.secret_key,
        cert_dir=settings.cert_dir, proxy_cert_dir=settings.proxy_cert_dir,
        insecure=settings.insecure_tls, extra_headers=settings.extra_headers,
        secret_headers=settings.secret_headers, architecture=settings.architecture,
        retry=RetryPolicy(attempts=settings.retry_attempts, speed_limit=settings.speed_limit,
                          speed_time=settings.speed_time, retry_time=settings.retry_time))


def target_spec(settings: PodSettings) -> TargetSpec:
    path = settings.target_path
    block = path == settings.block_device
    if settings.content_type == "archive" and not block:
        path = settings.data_dir  # unpacked into the volume itself
    return TargetSpec(path=path, size=None if block else settings.image_size,
                      filesystem_overhead=0.0 if block else settings.filesystem_overhead,
                      preallocate=settings.preallocation, check_free_space=not block)


def run_job(settings: PodSettings, progress: Progress) -> ImportResult:
    target = target_spec(settings)
    if settings.source == "blank":
        return create_blank(target, progress)
    source = open_source(settings.endpoint, source_options(settings), kind=settings.source)
    options = ImportOptions(
        checksum=Checksum.parse(settings.checksum) if settings.checksum else None,
        content_type=settings.content_type, scratch_dir=settings.scratch_dir, progress=progress)
    return run_import(source, target, options)
