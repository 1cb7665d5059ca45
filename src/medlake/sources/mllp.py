"""MLLP: the HL7 v2 listener (`medlake listen`) and a small sender.

A frame is `0x0B message 0x1C 0x0D`. The listener (asyncio, many concurrent connections):

- reads frames, parses the header (`hl7v2.parse`) and picks the source: one port per source (`--source`, or
  every `mllp_port` of a sources.toml with `--sources`), or routing rules on MSH-3/MSH-4/MSH-9 (`--routes FILE`);
- puts every received message on one bounded queue; a single committer takes whatever has arrived meanwhile
  and lands it with one `put_many` (one durable transaction: group commit) in a worker thread, so the event
  loop keeps reading while the disk syncs;
- answers only after the commit: AA when landed (and, with validation on, staged without error), AE with the
  reason and field when the content is invalid, AR when the bytes are not an HL7 message (no start block, no
  MSH, undecodable) or could not be stored. Whatever was received is landed first, even when rejected: bytes
  outside a frame, a frame cut short (by a disconnect, or by a new start block: the message starts after the
  last 0x0B), a frame over `max_frame` as far as it was read (answered AR, the connection then closed);
- applies backpressure: when the queue is full a connection stops reading its socket (TCP pushes back on the
  sender) and each connection has at most `window` unanswered messages, so memory stays bounded;
- shuts down gracefully (`stop()`, SIGTERM in the CLI): stops accepting, stops reading, lands and answers what
  was received, then closes.

Layering: `sources` sits below `landing`, so the landing store (anything with `put_many([item]) -> [receipt]`)
and its item type are passed in by the caller (the CLI passes `medlake.landing.Landing` and `Item`).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import fnmatch
import socket
import tomllib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from medlake.sources import hl7v2

VT, FS, CR = hl7v2.VT, hl7v2.FS, b"\r"
_WS = b" \t\r\n\x00"


def frame(data: bytes) -> bytes:
    return VT + data + FS + CR


class MLLPError(ConnectionError):
    """Sending failed part-way; `.acks` holds the ACKs received before it did (in message order)."""

    def __init__(self, message: str, acks: list[bytes]):
        super().__init__(message)
        self.acks = acks


# -- routing -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Route:
    """Messages whose header matches go to `source`. Patterns are shell globs ("ADT^*", "LIS*"); None = any."""
    source: str
    message_type: str | None = None          # MSH-9 as "ADT^A01"
    sending_application: str | None = None   # MSH-3.1
    sending_facility: str | None = None      # MSH-4.1

    def matches(self, msg: hl7v2.Message) -> bool:
        for pattern, value in ((self.message_type, msg.type), (self.sending_application, msg.get("MSH-3.1")),
                               (self.sending_facility, msg.get("MSH-4.1"))):
            if pattern is not None and not fnmatch.fnmatchcase(value, pattern):
                return False
        return True


class Router:
    """First matching route wins; else `default`. A message that cannot be parsed goes to `default` (or to
    `unrouted`) and is answered AR."""

    def __init__(self, routes: Iterable[Route] = (), default: str | None = None, unrouted: str = "unrouted"):
        self.routes, self.default, self.unrouted = list(routes), default, unrouted
        if not self.routes and not default:
            raise ValueError("give a source (--source) or routing rules (--routes FILE)")

    def __call__(self, msg: hl7v2.Message | None) -> str | None:
        if msg is not None:
            for r in self.routes:
                if r.matches(msg):
                    return r.source
        return self.default


def load_routes(path: str | Path) -> tuple[list[Route], str | None]:
    """Read a routing file: `[[route]]` tables (source, message_type, sending_application, sending_facility)
    and an optional top-level `default = "source"`. Errors name the file, the key and the reason."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ValueError(f"{path}: cannot read the routing file: {e.strerror or e}") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid TOML: {e}") from e
    problems, routes = [], []
    default = data.get("default")
    if default is not None and not (isinstance(default, str) and default):
        problems.append("default: must be a source name")
    unknown = set(data) - {"route", "default"}
    if unknown:
        problems.append(f"{', '.join(sorted(unknown))}: unknown key (expected [[route]] tables and default)")
    raw = data.get("route", [])
    if not isinstance(raw, list) or not raw and default is None:
        problems.append("route: expected at least one [[route]] table")
        raw = []
    keys = set(Route.__dataclass_fields__)
    for i, r in enumerate(raw):
        where = f"route[{i}]"
        if not isinstance(r, dict):
            problems.append(f"{where}: must be a table")
            continue
        for k in sorted(set(r) - keys):
            problems.append(f"{where}.{k}: unknown key (expected {', '.join(sorted(keys))})")
        for k in keys & set(r):
            if not isinstance(r[k], str) or not r[k]:
                problems.append(f"{where}.{k}: must be a non-empty string")
        if "source" not in r:
            problems.append(f"{where}.source: missing (the source these messages land in)")
        if not problems:
            routes.append(Route(**{k: r[k] for k in keys & set(r)}))
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return routes, default


# -- the listener -------------------------------------------------------------------------------------------------

@dataclass
class Stats:
    connections: int = 0
    received: int = 0
    landed: int = 0            # new content
    duplicates: int = 0        # content this source had landed before (e.g. resent after a lost ACK)
    unacknowledged: int = 0    # landed but nobody to answer (bytes outside a frame, a frame cut by a disconnect)
    commits: int = 0
    largest_commit: int = 0
    acks: dict = field(default_factory=lambda: {"AA": 0, "AE": 0, "AR": 0})


@dataclass
class _Entry:
    data: bytes
    source: str
    name: str
    msg: hl7v2.Message | None
    error: hl7v2.HL7Error | None
    reject: str | None          # AR reason decided before landing
    conn: "_Conn | None"        # None: land it, nobody to answer (bytes outside a frame, a frame cut short)
    ack: bytes | None = None    # set after the commit
    invalid: hl7v2.HL7Error | None = None   # staging failed: answered AE once landed
    batch: list | None = None   # an HL7 batch (FHS/BHS), one ACK each: [(message, why staging it fails or None)],
                                # or [(its bytes, HL7Error)] for a message that does not parse (AR)


class _Conn(asyncio.Protocol):
    """One sender's connection: splits frames, hands them to the listener, writes ACKs in message order."""

    def __init__(self, listener: "Listener"):
        self.li = listener
        self.buf = bytearray()
        self.waiting: deque[_Entry] = deque()   # answered in this order
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.paused = self.closed = self.eof = False
        self.refused = self.draining = False    # a frame over the limit: read no more, close once answered

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        if self.li.stopping:
            transport.close()
            return
        self.li.conns.add(self)
        self.li.stats.connections += 1

    def data_received(self, data: bytes) -> None:
        if self.li.stopping or self.refused:
            return                                  # not read: never answered, the sender sends it again
        self.buf += data
        self.process()

    def process(self) -> None:
        """Take the complete frames in the buffer, as long as the listener has room (else stop reading)."""
        buf, li = self.buf, self.li
        start = 0
        full = False
        while True:
            if len(li.queue) >= li.max_queue or len(self.waiting) >= li.window:
                full = True
                break
            i = buf.find(FS, start)
            if i < 0:
                break
            li.receive(bytes(buf[start:i]), self)
            start = i + 1
        if start:
            del buf[:start]
        if full:
            if not self.paused:
                self.paused = True
                self.transport.pause_reading()
            return
        if len(buf) > li.max_frame:
            # Memory stays bounded: what came of the frame is landed (nobody to answer), the sender gets AR after
            # the ACKs of the frames before it, and the connection closes (the rest of the frame is not read).
            reason = (f"frame larger than {li.max_frame:,} bytes: not accepted; the listener's limit is raised "
                      f"with `medlake listen --max-frame MB`")
            data = bytes(buf).lstrip(_WS)
            buf.clear()
            li.submit(_Entry(data, li.router.default or li.router.unrouted, f"mllp:{self.peer}/oversized", None,
                             None, reason, None))
            i = data.rfind(VT)
            self.waiting.append(_Entry(b"", "", "", None, None, reason, self,
                                       hl7v2.ack(data[i + 1:i + 4097] if i >= 0 else data[:4096], "AR", reason)))
            li.stats.acks["AR"] += 1
            self.refused = True
            if not self.paused:
                self.paused = True
                self.transport.pause_reading()
            self.flush()

    def eof_received(self):
        rest = bytes(self.buf).strip(_WS)
        self.buf.clear()
        if rest and not self.li.stopping:           # a frame cut short by the sender: kept, nobody to answer
            self.li.submit(_Entry(rest, self.li.router.default or self.li.router.unrouted,
                                  f"mllp:{self.peer}/incomplete", None, None, "incomplete frame", None))
        self.eof = True
        self.flush()
        return True                                 # keep the transport open to write the last ACKs

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.li.conns.discard(self)
        self.li.changed.set()

    def flush(self) -> None:
        """Write the ACKs that are ready, in order; close once everything is answered after EOF."""
        w = self.waiting
        out = []
        while w and w[0].ack is not None:
            out.append(frame(w.popleft().ack))
        if out and not self.closed:
            self.transport.write(b"".join(out))
        if w or self.closed:
            return
        if self.eof:
            self.transport.close()
        elif self.refused and not self.draining:
            # Half-close: the sender reads every ACK before it sees the end. What it still sends is read and
            # dropped (closing with unread input would reset the connection and could destroy the ACKs).
            self.draining = True
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.transport.resume_reading()
            asyncio.get_running_loop().call_later(2.0, self.transport.close)


def _parse_each(data: bytes) -> list[tuple[bytes, hl7v2.Message | None, hl7v2.HL7Error | str | None]]:
    """Each message of a frame holding several, in order: (its bytes, the message, None), or (its bytes, None, why
    it does not parse: the HL7Error, or the reader's failure as text)."""
    out = []
    for r in hl7v2.split(data):
        try:
            if r.error:
                raise hl7v2.HL7Error(r.error)
            out.append((r.data, hl7v2.parse(r.data), None))
        except hl7v2.HL7Error as e:
            out.append((r.data, None, e))
        except Exception as e:  # noqa: BLE001 - a reader bug, as in `receive`
            out.append((r.data, None, _reader_failed(e)))
    return out


def _several(data: bytes):
    """A frame holding several messages one after another, without a batch header (see `_batch`): (first
    message, the others, None, None), answered as one; or (first, [], error, reason) when one of them fails to
    parse — said with its place."""
    each = _parse_each(data)
    k, x = next(((k, x) for k, (_, m, x) in enumerate(each, 1) if m is None), (0, None))
    if isinstance(x, str):
        return each[0][1], [], None, x
    if x is not None:
        reason = f"message {k} of the frame's {len(each)}: {x.reason}"
        return each[0][1], [], hl7v2.HL7Error(reason, field=x.field), reason
    return each[0][1], [m for _, m, _ in each[1:]], None, None


def _batch(data: bytes):
    """An HL7 batch (FHS/BHS … BTS/FTS): (first message that parses, the others that do, {place: (bytes, HL7Error)}
    of those that do not, None) — each is answered in the batch of ACKs, AR for those; or (None, [], {}, reason)
    when none parses."""
    each = _parse_each(data)
    msgs = [m for _, m, _ in each if m is not None]
    unparsed = {k: (raw, x if isinstance(x, hl7v2.HL7Error) else hl7v2.HL7Error(x))
                for k, (raw, m, x) in enumerate(each) if m is None}
    if not msgs:
        return None, [], {}, ("the frame holds a batch header and no message" if not unparsed else
                              f"no message of the batch parses: {next(iter(unparsed.values()))[1].reason}")
    return msgs[0], msgs[1:], unparsed, None


def _stage_error(msg: hl7v2.Message) -> hl7v2.HL7Error | None:
    """Why staging `msg` fails (answered AE once landed), or None."""
    try:
        hl7v2.stage(msg)
    except hl7v2.HL7Error as x:
        return x
    except Exception as x:  # noqa: BLE001 - a reader bug, as in `receive`: AE, the message landed
        return hl7v2.HL7Error(_reader_failed(x))
    return None


def _ack(msg: hl7v2.Message, invalid: hl7v2.HL7Error | None) -> bytes:
    """AA, or AE with why staging the message fails (landed all the same)."""
    if invalid is None:
        return hl7v2.ack(msg, "AA")
    return hl7v2.ack(msg, "AE", invalid.reason, error_field=invalid.field,
                     error_code="101^Required field missing^HL70357" if "empty" in invalid.reason
                     or "missing" in invalid.reason else "207^Application internal error^HL70357")


def _reader_failed(e: Exception) -> str:
    return (f"medlake's HL7 v2 reader failed on this message ({type(e).__name__}: {e}); it is landed, and staged "
            f"by `medlake quarantine retry` once the reader is fixed")


class Listener:
    def __init__(self, landing: Any, item: Callable[..., Any], router: Router, *, host: str = "127.0.0.1",
                 port: int = 2575, max_queue: int = 4096, max_batch: int = 2048, window: int = 256,
                 max_frame: int = 16 << 20, validate: bool = True, batch: str | None = None):
        self.landing, self.item, self.router = landing, item, router
        self.host, self.port = host, port
        self.max_queue, self.max_batch, self.window, self.max_frame = max_queue, max_batch, window, max_frame
        self.validate, self.batch = validate, batch
        self.stats = Stats()
        self.queue: deque[_Entry] = deque()
        self.conns: set[_Conn] = set()
        self.stopping = False
        self.server: asyncio.AbstractServer | None = None
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mllp-landing")
        self.changed = asyncio.Event()      # something to commit, or a connection went away
        self._committer: asyncio.Task | None = None
        self._idle = True

    async def start(self) -> "Listener":
        loop = asyncio.get_running_loop()
        self.changed = asyncio.Event()
        self.server = await loop.create_server(lambda: _Conn(self), self.host, self.port, backlog=512)
        self.port = self.server.sockets[0].getsockname()[1]
        if self.batch is None:
            self.batch = f"mllp:{self.port}:{dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}"
        self._committer = asyncio.create_task(self._commit_loop())
        return self

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting and reading; land and answer everything received; close."""
        if self.stopping:
            return
        self.stopping = True
        if self.server is not None:
            self.server.close()
        for c in list(self.conns):
            c.buf.clear()                           # a partly received frame was never received: not answered
            if c.transport is not None:
                c.transport.pause_reading() if not c.transport.is_closing() else None
        self.changed.set()
        deadline = asyncio.get_running_loop().time() + timeout
        while (self.queue or not self._idle) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        if self._committer is not None:
            self._committer.cancel()
            try:
                await self._committer
            except asyncio.CancelledError:
                pass
        # Answer, then half-close: the sender reads every ACK before it sees the end. Reading resumes only to
        # drop what the sender still sends (never answered, so sent again) — closing with unread input would
        # reset the connection and could destroy ACKs not yet read by the sender.
        for c in list(self.conns):
            c.flush()
            t = c.transport
            if t is not None and not t.is_closing():
                if t.can_write_eof():
                    t.write_eof()
                t.resume_reading()
        grace = asyncio.get_running_loop().time() + 2.0
        while any(not c.closed for c in self.conns) and asyncio.get_running_loop().time() < grace:
            await asyncio.sleep(0.01)
        for c in list(self.conns):
            if c.transport is not None:
                c.transport.close()
        if self.server is not None:
            await self.server.wait_closed()
        self.pool.shutdown(wait=True)

    # receiving --------------------------------------------------------------------------------------------------------
    def receive(self, body: bytes, conn: _Conn) -> None:
        """One frame's body (without the 0x1C): its message, and any bytes before its start block.

        The message starts after the last start block: a sender that gives up on a frame part-way and starts
        again on the same connection sends 0x0B part 0x0B whole 0x1C; the part is landed on its own (nobody to
        answer: the sender, without an ACK, sends it again), not read as the start of the whole one."""
        i = body.rfind(VT)
        before = (body[:i] if i >= 0 else b"").strip(_WS)
        if before:   # bytes outside any frame, or a frame cut short by a new start block: landed, nobody to answer
            cut = VT in before
            self.submit(_Entry(before, self.router.default or self.router.unrouted,
                               f"mllp:{conn.peer}/{'incomplete' if cut else 'outside-frame'}", None, None,
                               "incomplete frame" if cut else "outside a frame", None))
        data = body[i + 1:] if i >= 0 else body.strip(_WS)
        if not data:
            if i >= 0:
                conn.waiting.append(_Entry(b"", "", "", None, None, "empty", conn,
                                           hl7v2.ack(b"", "AR", "empty MLLP frame")))
                self.stats.acks["AR"] += 1
                conn.flush()
            return
        msg = error = reject = None
        more: list[hl7v2.Message] = []   # the frame's other messages, when it holds several (an HL7 batch)
        unparsed: dict[int, tuple[bytes, hl7v2.HL7Error]] = {}  # an HL7 batch's messages that do not parse
        batch = data.lstrip(_WS).startswith((b"FHS", b"BHS"))
        try:
            msg = hl7v2.parse(data)
        except hl7v2.HL7Error as e:
            error, reject = e, e.reason
            if batch:
                msg, more, unparsed, reject = _batch(data)
                error = None
            elif e.reason.startswith("a second MSH segment"):
                msg, more, error, reject = _several(data)
        except Exception as e:  # noqa: BLE001 - a reader bug: this message is landed and answered, the feed goes on
            reject = _reader_failed(e)
        if i < 0:
            reject = "no MLLP start block (0x0B) before the message; frame each message as 0x0B … 0x1C 0x0D"
        source, routed = self.router(msg), reject is None
        if source is None:
            source = self.router.unrouted
            reject = reject or (f"no route for MSH-3 {msg.get('MSH-3.1')!r}, MSH-4 {msg.get('MSH-4.1')!r}, "
                                f"MSH-9 {msg.type!r}")
        name = (f"mllp:{conn.peer}/{msg.control_id}" + (f"+{len(more)}" if more else "") if msg is not None
                else f"mllp:{conn.peer}")
        entry = _Entry(data, source, name, msg, error, reject, conn)
        if self.validate and reject is None:   # here, on the loop, while the worker thread waits on the disk
            errors = [_stage_error(m) for m in [msg, *more]]
            k, x = next(((k, x) for k, x in enumerate(errors, 1) if x is not None), (0, None))
            if x is not None:
                entry.invalid = x if not more else hl7v2.HL7Error(
                    f"message {k} of the frame's {len(more) + 1} ({[msg, *more][k - 1].control_id}): {x.reason}",
                    field=x.field)
        else:
            errors = [None] * (len(more) + 1)
        if batch and routed and msg is not None:  # (a batch with no route: each of its messages answered AR)
            entry.batch = list(zip([msg, *more], errors))
            for k in sorted(unparsed):   # in their places
                entry.batch.insert(k, unparsed[k])
        conn.waiting.append(entry)
        self.submit(entry)

    def submit(self, entry: _Entry) -> None:
        self.stats.received += 1
        self.queue.append(entry)
        self.changed.set()

    def _resume(self) -> None:
        """Backpressure released: paused connections take their buffered frames, then read again."""
        if len(self.queue) >= self.max_queue // 2 or self.stopping:
            return
        for c in list(self.conns):
            if c.paused and not c.refused and len(c.waiting) < self.window and not c.transport.is_closing():
                c.paused = False
                c.transport.resume_reading()
                c.process()

    # landing ------------------------------------------------------------------------------------------------------
    async def _commit_loop(self) -> None:
        loop = asyncio.get_running_loop()
        q = self.queue
        while True:
            if not q:
                self._idle = True
                self.changed.clear()
                await self.changed.wait()
                continue
            self._idle = False
            batch = [q.popleft() for _ in range(min(len(q), self.max_batch))]
            self._resume()
            acks = await loop.run_in_executor(self.pool, self._commit, batch)
            st = self.stats
            st.commits += 1
            st.largest_commit = max(st.largest_commit, len(batch))
            touched = set()
            for e, (code, a) in zip(batch, acks):
                if e.conn is None:
                    st.unacknowledged += 1
                    continue
                st.acks[code] += 1
                e.ack = a
                touched.add(e.conn)
            for c in touched:
                c.flush()
            self._resume()

    def _commit(self, batch: list[_Entry]) -> list[tuple[str, bytes]]:
        """In the worker thread: land the group durably, then decide each answer."""
        try:
            receipts = self.landing.put_many([self.item(e.data, e.source, e.name, self.batch) for e in batch])
        except Exception as x:  # noqa: BLE001 - nothing was stored: say so, the sender keeps the message
            reason = f"not stored ({type(x).__name__}: {x}); send it again"
            return [("AR", hl7v2.ack(e.msg or e.data, "AR", reason)) for e in batch]
        out = []
        for e, r in zip(batch, receipts):
            if r.duplicate:
                self.stats.duplicates += 1
            else:
                self.stats.landed += 1
            if e.conn is None:
                out.append(("", b""))
            elif e.batch is not None:   # an HL7 batch is answered by a batch: one ACK per message
                data = e.data.lstrip(_WS)
                acks = [hl7v2.ack(m, "AR", x.reason, error_field=x.field) if isinstance(m, bytes) else
                        hl7v2.ack(m, "AR", e.reject) if e.reject is not None else _ack(m, x) for m, x in e.batch]
                code = ("AR" if e.reject is not None or any(isinstance(m, bytes) for m, _ in e.batch) else
                        "AA" if e.invalid is None else "AE")
                out.append((code, hl7v2.batch_ack(data[:data.find(b"MSH")], acks)))
            elif e.reject is not None:
                field = e.error.field if e.error is not None else None
                out.append(("AR", hl7v2.ack(e.msg or e.data, "AR", e.reject, error_field=field)))
            else:
                out.append(("AA" if e.invalid is None else "AE", _ack(e.msg, e.invalid)))
        return out


# -- the sender -----------------------------------------------------------------------------------------------------

def send(host: str, port: int, messages: Iterable[bytes], *, window: int = 1, timeout: float = 30.0,
         on_ack: Callable[[int, bytes], None] | None = None) -> list[bytes]:
    """Send messages over one connection and return their ACKs, in order. `window` > 1 pipelines (that many
    messages in flight). `on_ack(i, ack)` is called as each ACK arrives. On failure raises MLLPError whose
    `.acks` are the ACKs received so far: the messages after those were not acknowledged and must be sent
    again."""
    acks: list[bytes] = []
    buf = bytearray()
    sent = 0
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def read_one():
                nonlocal buf
                while True:
                    i = buf.find(FS + CR)
                    if i >= 0:
                        a = bytes(buf[:i])
                        del buf[:i + 2]
                        acks.append(a[a.find(VT) + 1:] if VT in a else a)
                        if on_ack is not None:
                            on_ack(len(acks) - 1, acks[-1])
                        return
                    chunk = s.recv(65536)
                    if not chunk:
                        raise ConnectionError("the listener closed the connection before answering")
                    buf += chunk

            try:
                for m in messages:
                    s.sendall(frame(m))
                    sent += 1
                    while sent - len(acks) >= window:
                        read_one()
            except OSError:  # the listener stopped taking messages: collect the ACKs it still sent, then fail
                s.settimeout(min(timeout, 5.0))
                try:
                    while len(acks) < sent:
                        read_one()
                except (OSError, ConnectionError):
                    pass
                raise
            while len(acks) < sent:
                read_one()
    except (OSError, ConnectionError) as e:
        raise MLLPError(f"MLLP to {host}:{port}: {e} after {len(acks)} ACK(s) of {sent} sent", acks) from e
    return acks


def ack_code(ack: bytes) -> str:
    """MSA-1 of an ACK ("AA", "AE", "AR"); of a batch of ACKs, the worst of theirs; "" when it is not an ACK."""
    worst = {"AA": 0, "CA": 0, "AE": 1, "CE": 1, "AR": 2, "CR": 2}
    try:
        codes = [hl7v2.parse(r.data).get("MSA-1") for r in hl7v2.split(ack)]
    except hl7v2.HL7Error:
        return ""
    return max(codes, key=lambda c: worst.get(c, -1)) if codes and all(c in worst for c in codes) else ""


# -- running it --------------------------------------------------------------------------------------------------------

async def serve(listeners: list[Listener], stop: asyncio.Event, on_start: Callable[[Listener], None] | None = None,
                tick: Callable[[list[Stats]], None] | None = None) -> list[Stats]:
    """Run the listeners (one port each) until `stop` is set, then shut them all down gracefully."""
    started = []
    try:
        for li in listeners:
            started.append(await li.start())
            if on_start:
                on_start(li)
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
            if tick:
                tick([li.stats for li in listeners])
    finally:
        await asyncio.gather(*(li.stop() for li in started))
    return [li.stats for li in listeners]


def run(listeners: list[Listener], on_start=None, tick=None) -> list[Stats]:
    """Serve until SIGTERM or SIGINT (Ctrl-C); then finish what was received and return the counts."""
    import signal

    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await serve(listeners, stop, on_start, tick)

    return asyncio.run(main())
