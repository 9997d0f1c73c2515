"""``python -m cdi.apiserver``: parse the settings once, then serve (see :mod:`.settings` for the flags)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from .server import serve
from .settings import Settings


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    serve(Settings.parse(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
