"""Client-side timeouts for every call to the API server.

Without them a connection that stops forwarding (a dead proxy, a half-open TCP session)
blocks its caller forever while everything looks healthy. Ordinary calls get a connect and a
read timeout; a watch asks the server to end it after ``WATCH_SERVER`` seconds and gives up
reading after ``WATCH_READ`` seconds of silence, so a stuck watch is noticed (and re-listed)
within ``WATCH_READ`` seconds even when no event is due.
"""

from __future__ import annotations

CONNECT = 5.0
REQUEST = (CONNECT, 30.0)  # ``_request_timeout`` of ordinary reads and writes: (connect, read)
LEASE = (CONNECT, 5.0)  # lease calls: well inside the renew deadline
WATCH_SERVER = 60  # ``timeout_seconds`` asked of the server for each watch request
WATCH_READ = WATCH_SERVER + 15  # read timeout of a watch: longer than an idle watch lasts
