"""The command line: every command, its flags, and the live progress display.

Commands load aiohttp's CA bundle on their first HTTPS request, not at import (:mod:`pipeline.tls`):
set up here, before any command imports aiohttp, so only the command line changes how aiohttp
starts; a program that imports the package's other parts keeps aiohttp's own behaviour."""

from pipeline.tls import defer_aiohttp_certs

__all__: list[str] = []

defer_aiohttp_certs()
