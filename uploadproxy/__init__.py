"""Uploads: the per-volume upload server, the proxy in front of it, tokens and a client.

=====================  =========================================================================
module                 job
=====================  =========================================================================
``server``             the upload server app and entrypoint (``python -m uploadproxy.server``)
``upload``             CDI's one-shot upload paths at the server (sync, async, form, archive)
``resumable``          our offset-based resumable protocol at the server
``session``            one upload at a time: the state machine around one import run
``channel``            the bounded byte pipe from the event loop to the pipeline thread
``body``               reading raw and multipart bodies into a session
``errors``             upload outcomes and their HTTP status codes
``proxy``              the upload proxy app and entrypoint (``python -m uploadproxy.proxy``)
``relay``              streaming one request to an upload server and the answer back
``resolver``           finding a volume's upload server (a Protocol; a static table)
``cors``               CORS as CDI's proxy does it
``tokens``             issuing and validating PS256 upload tokens
``tls``                TLS contexts (server, client, mutual) and the peer's CN
``settings``           the server's and the proxy's settings, read once from the environment
``client``             :func:`~uploadproxy.client.upload`, the client library
``paths``              URL paths and headers
``eventloop``          uvloop when installed
=====================  =========================================================================

Imports go one way: ``uploadproxy`` uses ``importer`` (the data path); ``importer`` never
imports ``uploadproxy``.
"""
