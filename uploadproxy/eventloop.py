"""Running the entrypoints' event loop: uvloop when it is installed, asyncio otherwise.

The proxy and the server spend most of their CPU in TLS: asyncio's pure-Python SSL transport
copies every byte through memory BIOs several times, while uvloop's runs the same OpenSSL calls
from C. On a 2-core machine where curl, proxy and server share the cores this is the
difference between the upload path keeping up with a plain TLS sink or not (bench/upload.py).
uvloop is optional: nothing else depends on it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    log.info("using uvloop")
    return uvloop.run(main)  # type: ignore[no-any-return]
