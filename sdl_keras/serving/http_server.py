"""An HTTP/1.1 server on h11 and asyncio that a client cannot trick into holding memory,
threads or connections: the transport of the REST API (sdl_keras.serving.rest_api).

h11 (the protocol engine of uvicorn and httpx) parses every message and enforces framing:
a negative or non-numeric Content-Length, conflicting lengths, an unknown transfer coding
or an oversized head are protocol errors, answered 400 (431, 501) before a body is read.
h11 does no I/O, so this module decides the rest, answering every error as JSON `{"error": ...}`:
- body limits before and while reading: a declared Content-Length over the limit is
  answered 413 at once; a chunked body is counted as it arrives and answered 413 when it
  passes the limit; a POST with neither header gets 411;
- after answering a request whose body it will not read (refused or malformed), the
  connection drains (reads and discards) what the client still sends, for up to 10 s (or the
  request timeout), before closing: the client receives the answer instead of a reset;
- one timeout (`HttpLimits.timeout_s`) for a request to arrive whole, head and body, and for
  an idle keep-alive connection; a partial request is answered 408;
- at most `max_connections` connections are served at once; more wait in the listen backlog;
- request handlers run in a thread pool, one request per connection at a time; a client
  that disconnects is logged in one line.
"""

import asyncio
import collections
import dataclasses
import json
import logging
import socket
import threading

import h11

logger = logging.getLogger(__name__)

Response = collections.namedtuple("Response", "status body content_type headers", defaults=("application/json", ()))


def json_response(status, value):
    return Response(status, json.dumps(value, allow_nan=False).encode("utf-8"))


def error_response(status, message):
    return json_response(status, {"error": message})


@dataclasses.dataclass(frozen=True)
class HttpLimits:
    max_body_bytes: int = 64 << 20
    timeout_s: float = 30.0
    max_connections: int = 256
    backlog: int = 1024
    max_head_bytes: int = 64 << 10
    # How long a refused body may keep arriving, read and discarded, before the connection closes.
    linger_s: float = 10.0


class _Disconnected(Exception):
    """The client closed the connection or stopped reading."""


class _Refused(Exception):
    """A request answered with an error without reading (all of) its body."""

    def __init__(self, response, drain):
        self.response, self.drain = response, drain


class HttpServer:
    """Serves `handler(method, target, headers, body) -> Response` (called in `executor`)
    on host:port (port 0: a free one; `port` holds the bound one after `start()`)."""

    def __init__(self, host, port, handler, executor, limits=HttpLimits()):
        self.host, self.port, self.handler, self.executor, self.limits = host, port, handler, executor, limits
        self._loop = asyncio.new_event_loop()
        self._thread = None
        self._sock = None
        self._connections = {}  # task -> connection state: "idle" or "busy"
        self._draining = False
        self._accepting = None

    def start(self):
        self._sock = socket.create_server((self.host, self.port), backlog=self.limits.backlog)
        self._sock.setblocking(False)
        self.port = self._sock.getsockname()[1]
        self._accepting = self._loop.create_task(self._accept())
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._run(),), name="rest",
                                        daemon=True)
        self._thread.start()
        return self

    async def _run(self):
        try:
            await self._accepting
        except asyncio.CancelledError:
            pass
        while self._connections:  # draining: connections finish their requests
            await asyncio.sleep(0.05)

    async def _accept(self):
        slots = asyncio.Semaphore(self.limits.max_connections)
        while True:
            await slots.acquire()  # at the cap, new connections wait in the listen backlog
            try:
                sock, peer = await self._loop.sock_accept(self._sock)
            except OSError:  # the listening socket was closed
                return
            task = self._loop.create_task(self._serve(sock, f"{peer[0]}:{peer[1]}"))
            self._connections[task] = "idle"
            task.add_done_callback(lambda t: (self._connections.pop(t, None), slots.release()))

    async def _serve(self, sock, peer):
        task = asyncio.current_task()
        reader, writer = await asyncio.open_connection(sock=sock)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_head_bytes)
        try:
            while True:
                self._connections[task] = "idle"
                deadline = self._loop.time() + self.limits.timeout_s
                close, drain, request = self._draining, False, None
                try:
                    request, body = await self._read_request(conn, reader, writer, deadline)
                    if request is None:
                        return  # closed, or idle past the timeout, between requests
                    self._connections[task] = "busy"
                    response = await self._loop.run_in_executor(self.executor, self._handle, request, body)
                except _Refused as refused:
                    self._connections[task] = "busy"
                    response, close, drain = refused.response, True, refused.drain
                await self._send(conn, writer, response, close=close or self._draining,
                                 head=request is not None and request.method == b"HEAD")
                if close or self._draining or conn.our_state is h11.MUST_CLOSE:
                    if drain:
                        await self._drain(reader)
                    return
                conn.start_next_cycle()
        except _Disconnected as disconnected:
            logger.info("REST client %s disconnected: %s", peer, disconnected)
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug here must cost one connection, not the server
            logger.exception("REST connection %s failed", peer)
        finally:
            writer.close()

    def _handle(self, request, body):
        try:
            return self.handler(request.method.decode("ascii", "replace"), request.target.decode("latin-1"),
                                _headers(request), body)
        except Exception as error:  # every request is answered, a bug included
            logger.exception("REST handler failed")
            return error_response(500, f"Internal error: {type(error).__name__}: {error}")

    async def _next_event(self, conn, reader, deadline):
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as error:
                if reader.at_eof():
                    raise _Disconnected("the connection closed mid-request") from None
                message = f"Malformed HTTP request: {error}."
                raise _Refused(error_response(error.error_status_hint, message), drain=True) from None
            if event is not h11.NEED_DATA:
                return event
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                raise TimeoutError
            try:
                data = await asyncio.wait_for(reader.read(1 << 16), remaining)
            except TimeoutError:  # an OSError too: not a disconnect
                raise
            except (ConnectionError, OSError) as error:
                raise _Disconnected(f"{type(error).__name__}: {error}") from None
            conn.receive_data(data)

    async def _read_request(self, conn, reader, writer, deadline):
        """(h11.Request, body bytes), or (None, None) when the client closed or idled out."""
        limits = self.limits
        try:
            event = await self._next_event(conn, reader, deadline)
        except TimeoutError:
            if conn.trailing_data[0]:
                raise _Refused(error_response(408, f"The request head was not received within {limits.timeout_s:g} s "
                                                   "(the REST timeout)."), drain=False) from None
            return None, None  # an idle keep-alive connection
        if isinstance(event, h11.ConnectionClosed):
            return None, None
        request, headers = event, _headers(event)
        length, chunked = headers.get("content-length"), "chunked" in headers.get("transfer-encoding", "")
        if request.method in (b"POST", b"PUT", b"PATCH") and length is None and not chunked:
            raise _Refused(error_response(411, "A request body needs a Content-Length or Transfer-Encoding: chunked "
                                               "header (HTTP 411 Length Required)."), drain=True)
        if length is not None and int(length) > limits.max_body_bytes:
            raise _Refused(error_response(413, f"The request body of {int(length):,} bytes (Content-Length) is over "
                                               f"the limit of {limits.max_body_bytes:,} bytes."), drain=True)
        if conn.client_is_waiting_for_100_continue:
            writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        chunks, size = [], 0
        try:
            while True:
                event = await self._next_event(conn, reader, deadline)
                if isinstance(event, h11.EndOfMessage):
                    return request, b"".join(chunks)
                if isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > limits.max_body_bytes:
                        raise _Refused(error_response(413, f"The request body (chunked) passed the limit of "
                                                           f"{limits.max_body_bytes:,} bytes while it was read."),
                                       drain=True)
                    chunks.append(event.data)
                elif isinstance(event, h11.ConnectionClosed):
                    raise _Disconnected(f"the connection closed after {size:,} bytes of the body")
        except TimeoutError:
            expected = f" of {int(length):,}" if length is not None else ""
            raise _Refused(error_response(408, f"The request body was not received within {limits.timeout_s:g} s "
                                               f"(the REST timeout): got {size:,}{expected} bytes."),
                           drain=False) from None

    async def _send(self, conn, writer, response, close, head=False):
        headers = [("Content-Type", response.content_type), ("Content-Length", str(len(response.body))),
                   *response.headers]
        if close:
            headers.append(("Connection", "close"))
        status = h11.Response(status_code=response.status, headers=headers, reason=_REASONS.get(response.status, b""))
        data = conn.send(status) + (b"" if head else conn.send(h11.Data(data=response.body)))
        data += conn.send(h11.EndOfMessage())
        try:
            writer.write(data)
            await asyncio.wait_for(writer.drain(), self.limits.timeout_s)
        except OSError as error:  # ConnectionError, or TimeoutError: the client stopped reading
            raise _Disconnected(f"while sending the {response.status} answer: {type(error).__name__}") from None

    async def _drain(self, reader):
        """Reads and discards what the client still sends, so it gets the answer before the close."""
        deadline = self._loop.time() + max(self.limits.timeout_s, self.limits.linger_s)
        try:
            while self._loop.time() < deadline:
                if not await asyncio.wait_for(reader.read(1 << 20), deadline - self._loop.time()):
                    return
        except OSError:  # TimeoutError included
            return

    def stop_accepting(self):
        """Refuses new connections; connections answer their current request, then close."""
        def close():
            self._draining = True
            self._accepting.cancel()
            if self._sock.fileno() == -1:  # already closed: a drain then a stop both ask
                return
            self._loop.remove_reader(self._sock)  # before the close: a pending accept must not see a closed socket
            self._sock.close()
            for task, state in list(self._connections.items()):
                if state == "idle":
                    task.cancel()

        self._loop.call_soon_threadsafe(close)

    def busy(self):
        return sum(state == "busy" for state in list(self._connections.values()))

    def stop(self, timeout=10.0):
        self.stop_accepting()
        self._thread.join(timeout)


def _headers(request):
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in request.headers}


_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 408: b"Request Timeout", 411: b"Length Required",
            413: b"Content Too Large", 429: b"Too Many Requests", 431: b"Request Header Fields Too Large",
            500: b"Internal Server Error", 501: b"Not Implemented", 503: b"Service Unavailable"}
