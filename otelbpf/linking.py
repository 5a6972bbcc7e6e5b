"""Stitch loose spans into traces: parents by thread, by connection and by traceparent.

How a parent is found (``otelbpf.parent.source`` on the child says which):

- **thread**: the kernel stamps each client request with the start of the server request its thread
  was serving when the request began, or when its connection was opened (``RequestEvent.cause_ns``).
  Thread-per-request servers make this exact. On an event loop it is the request the loop read
  last, a best guess, marked ``otelbpf.parent.event_loop=true`` when others were in flight too.
- **connection**: a client span and a server span on the same TCP 4-tuple whose times overlap are
  the two ends of one request: the server span becomes the client span's child.
- **traceparent**: set by the span builder from the request's header; such a span keeps that parent.

Where the evidence is ambiguous (a client request on an event loop whose last-read request had
already been answered, two overlapping candidates on one connection) the span gets span links to
the candidates instead of a parent.

Children finish before their parents and the two ends of a connection arrive in either order, so
spans are held until their tree has been quiet for ``window_s``, then released together with one
trace id, top down. A child whose parent has not arrived after ``max_hold_s`` goes out under
reserved ids (trace id and the parent's span id): the parent, when it comes, takes them.
Everything is bounded: held spans by ``max_spans`` (the oldest trees go out early, counted) and
the indexes by time.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from otelbpf import events
from otelbpf.events import RequestEvent
from otelbpf.spans import Span, SpanLink

PARENT_SOURCE = "otelbpf.parent.source"
EVENT_LOOP = "otelbpf.parent.event_loop"
LINK_SOURCE = "otelbpf.link.source"

# How long ids of a reserved parent (children already exported) wait for the parent's span.
RESERVED_RETAIN_S = 120.0
# Most links on one span: an event loop with hundreds of requests in flight must not bloat it.
MAX_LINKS = 8
# Connections remembered as having no traced caller.
MAX_UNCALLED = 65536
# Spans remembered per thread and per connection, for the overlap checks.
PER_KEY = 256
# How far out of end order records may arrive: several CPUs write one ring buffer, each record a few
# microseconds after its end time (a response ended by the next request or a close comes later still,
# and may miss an overlap check).
REORDER_NS = 1_000_000

# Client address, client port, server address, server port; addresses in 16-byte IPv6 form.
ConnKey = tuple[bytes, int, bytes, int]
_AF_INET = 2
_AF_INET6 = 10


@dataclass
class LinkStats:
    """What the linker did, for the end-of-run summary."""

    thread: int = 0  # parents found by thread
    event_loop: int = 0  # of those, on a thread serving several requests at once (best effort)
    connection: int = 0  # parents found by connection 4-tuple
    ambiguous: int = 0  # spans given links instead of a parent
    reserved: int = 0  # spans exported before their parent arrived (under reserved ids)
    parents_never_seen: int = 0  # reserved parents whose span never came (shed, lost, still running)
    late_links: int = 0  # parent found after ids were fixed differently: a link instead
    released_early: int = 0  # spans released before their window because the hold buffer was full
    no_room: int = 0  # parents not held because max_spans placeholders were waiting already


class _Node:
    """One span (or, before it arrives, a server request that children point at)."""

    __slots__ = (
        "span",
        "pid",
        "tid",
        "server",
        "kstart",
        "kend",
        "cause",
        "conn",
        "span_id",
        "trace_id",
        "parent",
        "children",
        "external",
        "exported",
        "due",
        "first_seen",
        "source",
        "links",
        "conn_child",
        "gone",
        "overlap",
    )

    def __init__(self, span_id: bytes, now: float) -> None:
        self.span: Span | None = None
        self.pid = 0
        self.tid = 0
        self.server = True
        self.kstart = 0
        self.kend = 0
        self.cause = 0
        self.conn: ConnKey | None = None
        self.span_id = span_id
        self.trace_id: bytes | None = None  # set once fixed: by traceparent, reservation or export
        self.parent: _Node | None = None
        self.children: list[_Node] | tuple[()] = ()  # a list once there is a child: most spans have none
        self.external = False  # parent given by traceparent (span.parent_span_id is remote)
        self.exported = False
        self.due = now  # latest due time in this node's subtree
        self.first_seen = now
        self.source = ""
        self.links: list[SpanLink] | tuple[()] = ()
        self.conn_child = False  # a client whose server end is already its child
        self.gone = False  # dropped from the indexes
        self.overlap: list[_Node] | None = None  # clients: server requests on the thread in flight at start


_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"


def _ipv6_form(family: int, raw: bytes) -> bytes:
    # A dual-stack server sees an IPv4 client as ::ffff:a.b.c.d; the client sees plain IPv4.
    return raw[:16] if family == _AF_INET6 else _V4_MAPPED + raw[:4]


def _conn_key(ev: RequestEvent) -> ConnKey | None:
    """The connection's 4-tuple, client side first, from the record header's raw addresses."""
    if ev.family not in (_AF_INET, _AF_INET6) or not ev.local_port or not ev.peer_port:
        return None  # a TLS session whose socket was never seen: no addresses to match
    local = _ipv6_form(ev.family, ev.local_addr)
    peer = _ipv6_form(ev.family, ev.peer_addr)
    if ev.role == events.ROLE_SERVER:
        return (peer, ev.peer_port, local, ev.local_port)
    return (local, ev.local_port, peer, ev.peer_port)


def _add_overlap(client: _Node, server: _Node) -> None:
    if client.overlap is None:
        client.overlap = [server]
    elif len(client.overlap) <= MAX_LINKS:
        client.overlap.append(server)


def _link(node: _Node, link: SpanLink) -> None:
    if node.links:
        node.links.append(link)  # type: ignore[union-attr]
    else:
        node.links = [link]


def _remember(index: dict, key: object, node: _Node) -> None:
    if key is None:
        return
    recent = index.get(key)
    if recent is None:
        recent = index[key] = deque(maxlen=PER_KEY)
    recent.append(node)


def _prune(index: dict, key: object) -> None:
    """Drop forgotten spans from the old end of one index entry, and the entry once empty."""
    recent = index.get(key) if key is not None else None
    if recent is None:
        return
    while recent and recent[0].gone:
        recent.popleft()
    if not recent:
        del index[key]


def _overlapping(recent: deque[_Node] | None, node: _Node) -> list[_Node]:
    """Spans in an index entry whose time overlaps node's, newest first. Records arrive in the order
    requests ended, so the walk stops at the first one that ended before node started (less a margin
    for records written late)."""
    out: list[_Node] = []
    if not recent:
        return out
    kstart, kend = node.kstart, node.kend
    oldest = kstart - REORDER_NS
    for o in reversed(recent):
        if o.kend < oldest:
            break
        if min(o.kend, kend) > max(o.kstart, kstart):
            out.append(o)
    return out


def _overlap(a: _Node, b: _Node) -> int:
    return min(a.kend, b.kend) - max(a.kstart, b.kstart)


class TraceLinker:
    """Holds spans briefly, links them into trees and releases each tree with one trace id."""

    def __init__(
        self,
        new_trace_id: Callable[[], bytes],
        new_span_id: Callable[[], bytes],
        window_s: float = 0.5,
        max_hold_s: float = 10.0,
        max_spans: int = 100_000,
    ) -> None:
        if window_s < 0 or max_hold_s < window_s or max_spans < 1:
            raise ValueError(
                f"link window {window_s}s must be >= 0 and <= the max hold {max_hold_s}s, and max spans >= 1"
            )
        self._new_trace_id = new_trace_id
        self._new_span_id = new_span_id
        self.window_s = window_s
        self.max_hold_s = max_hold_s
        self.max_spans = max_spans
        # Indexes, each bounded by expiry.
        self._servers: dict[tuple[int, int], _Node] = {}  # (pid, kernel start) -> server request
        # Recent spans in arrival order (= the order requests ended), per thread and per 4-tuple, one
        # index per role so that a scan only walks the other role's spans.
        self._thread_servers: dict[tuple[int, int], deque[_Node]] = {}
        self._thread_clients: dict[tuple[int, int], deque[_Node]] = {}
        self._conn_clients: dict[ConnKey, deque[_Node]] = {}
        self._conn_servers: dict[ConnKey, deque[_Node]] = {}
        self._heap: list[tuple[float, int, _Node]] = []  # (due, seq, node) of held trees
        # (when, node) to drop from the indexes; times only grow, so deques stay in order.
        self._expiry: deque[tuple[float, _Node]] = deque()
        self._reserved_expiry: deque[tuple[float, _Node]] = deque()
        self._seq = itertools.count()
        self.held = 0
        self.placeholders = 0  # server requests children point at whose span has not arrived
        self._early: list[Span] = []
        # 4-tuples whose last server span found no traced caller in its window (LRU, bounded): the
        # next request on the connection has no caller either, so it need not wait for one.
        self._uncalled: OrderedDict[ConnKey, None] = OrderedDict()
        self.stats = LinkStats()

    # ---- intake ----

    def add(self, span: Span, ev: RequestEvent, now: float) -> None:
        """Take one new span (with the kernel facts behind it)."""
        server = ev.role == events.ROLE_SERVER
        node = self._servers.get((ev.pid, ev.start_ns)) if server else None
        conn = _conn_key(ev)
        if server and node is None and span.parent_span_id is None and self._uncalled:
            if conn in self._uncalled and (ev.pid, ev.tid) not in self._thread_clients:
                # Keep-alive from an untraced client (a load balancer, a browser) to a thread that
                # makes no calls itself (a static file server): nothing will claim this span, so it
                # goes out at once, its own trace, without being held or indexed.
                self._uncalled.move_to_end(conn)
                self._early.append(span)
                return
        if node is None or node.span is not None:
            node = _Node(span.span_id, now)
            if server:
                self._servers[(ev.pid, ev.start_ns)] = node
        else:
            self.placeholders -= 1  # children already point at it: the span takes its ids
        node.span = span
        node.pid, node.tid, node.server = ev.pid, ev.tid, server
        node.kstart, node.kend, node.cause = ev.start_ns, ev.end_ns, ev.cause_ns if not server else 0
        node.conn = conn
        node.due = max(node.due, now + self.window_s)
        self.held += 1
        self._note_thread(node)
        if server:
            self._server_arrived(node, span)
        else:
            self._client_arrived(node)
        if server and node.parent is None and not node.external and node.conn in self._uncalled:
            # Keep-alive from an untraced client to a thread that also makes calls: nothing will
            # come to claim this span either, but client spans on the thread may need it indexed.
            self._release(node, now, self._early)
        else:
            self._push(node)
        if self.held > self.max_spans:
            self._release_oldest(now)

    def _server_arrived(self, node: _Node, span: Span) -> None:
        if span.parent_span_id is not None:
            # traceparent: an explicit parent beats anything inferred.
            if node.trace_id is not None and node.trace_id != span.trace_id:
                # Children went out under reserved ids: keep them whole, link to the caller instead.
                _link(
                    node,
                    SpanLink(span.trace_id, span.parent_span_id, span.trace_state, ((LINK_SOURCE, "traceparent"),)),
                )
                span.parent_span_id = None
                span.trace_state = ""
                span.attributes.pop(PARENT_SOURCE, None)
                self.stats.late_links += 1
            else:
                node.external = True
                node.trace_id = span.trace_id
                return
        if node.conn is None:
            return
        _remember(self._conn_servers, node.conn, node)
        candidates = [
            c for c in _overlapping(self._conn_clients.get(node.conn), node) if not c.conn_child and not c.gone
        ]
        self._match_connection(node, candidates)

    def _client_arrived(self, node: _Node) -> None:
        if node.cause:
            key = (node.pid, node.cause)
            parent = self._servers.get(key)
            if parent is None and self.placeholders < self.max_spans:
                # The server span ends later: hold a place (and its span id) for it.
                parent = self._servers[key] = _Node(self._new_span_id(), node.first_seen)
                parent.pid, parent.kstart = node.pid, node.cause
                self.placeholders += 1
                self._push(parent)
            if parent is None:
                self.stats.no_room += 1
            elif self._attach(node, parent, "thread"):
                self.stats.thread += 1
        if node.conn is None:
            return
        _remember(self._conn_clients, node.conn, node)
        self._uncalled.pop(node.conn, None)  # a traced caller after all
        servers = [
            s
            for s in _overlapping(self._conn_servers.get(node.conn), node)
            if s.parent is None and not s.external and not s.gone
        ]
        if len(servers) == 1:
            if self._attach(servers[0], node, "connection"):
                node.conn_child = True
                self.stats.connection += 1
        elif servers:
            self._ambiguous(node, servers, "connection")

    def _match_connection(self, server: _Node, clients: list[_Node]) -> None:
        if not clients:
            return
        clients.sort(key=lambda c: _overlap(c, server), reverse=True)
        if len(clients) > 1 and _overlap(clients[1], server) * 2 >= _overlap(clients[0], server):
            self._ambiguous(server, clients, "connection")  # pipelined: which request is whose?
            return
        if self._attach(server, clients[0], "connection"):
            clients[0].conn_child = True
            self.stats.connection += 1

    def _ambiguous(self, node: _Node, candidates: list[_Node], source: str) -> None:
        for c in candidates[:MAX_LINKS]:
            _link(node, SpanLink(self._fix_trace(c), c.span_id, "", ((LINK_SOURCE, source),)))
        self.stats.ambiguous += 1

    # ---- tree bookkeeping ----

    def _root(self, node: _Node) -> _Node:
        """The top of node's held tree: its highest ancestor not yet exported."""
        while node.parent is not None and not node.parent.exported:
            node = node.parent
        return node

    def _tree_trace(self, node: _Node) -> bytes | None:
        while node is not None:
            if node.trace_id is not None:
                return node.trace_id
            node = node.parent
        return None

    def _fix_trace(self, node: _Node) -> bytes:
        """The trace id node will be exported under, decided now (links need it)."""
        trace = self._tree_trace(node)
        if trace is None:
            trace = self._root(node).trace_id = self._new_trace_id()
        return trace

    def _attach(self, child: _Node, parent: _Node, source: str) -> bool:
        """Make parent the parent of child; False (and a link instead) when ids are already fixed."""
        if child.exported or child.parent is not None or child.external:
            self._late(parent, child, source)
            return False
        p = parent
        while p is not None:
            if p is child:
                return False  # would make a cycle (pid or port reuse): leave both as they are
            p = p.parent
        child_trace = child.trace_id
        parent_trace = self._tree_trace(parent)
        if child_trace is not None and parent_trace is not None and child_trace != parent_trace:
            self._late(parent, child, source)
            return False
        if child_trace is not None and parent_trace is None:
            self._root(parent).trace_id = child_trace  # the parent's tree adopts the fixed id
        child.parent = parent
        child.source = source
        if parent.children:
            parent.children.append(child)
        else:
            parent.children = [child]
        root = self._root(parent)
        if child.due > root.due:
            root.due = child.due
            self._push(root)
        return True

    def _late(self, parent: _Node, child: _Node, source: str) -> None:
        # Ids on one side were already final: record the relation as a link on whichever side is
        # still held.
        self.stats.late_links += 1
        if not parent.exported and parent.span is not None:
            _link(parent, SpanLink(self._fix_trace(child), child.span_id, "", ((LINK_SOURCE, source),)))
        elif not child.exported and child.span is not None:
            _link(child, SpanLink(self._fix_trace(parent), parent.span_id, "", ((LINK_SOURCE, source),)))

    def _push(self, node: _Node) -> None:
        heapq.heappush(self._heap, (node.due, next(self._seq), node))

    # ---- release ----

    def take_ready(self, now: float) -> list[Span]:
        """Spans whose trees have been quiet for the window, ready to export."""
        out: list[Span] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, node = heapq.heappop(heap)
            if node.exported:
                continue
            root = self._root(node)
            if root.due > now:
                continue  # the tree grew since: a later entry exists
            if root.span is None and now < root.first_seen + self.max_hold_s:
                # Children of a server request still running: wait for it, up to the max hold.
                root.due = root.first_seen + self.max_hold_s
                self._push(root)
                continue
            self._release(root, now, out)
        self._expire(now)
        return out

    def flush(self, now: float) -> list[Span]:
        """Everything held, now (at shutdown)."""
        out: list[Span] = []
        while self._heap:
            _, _, node = heapq.heappop(self._heap)
            if not node.exported:
                self._release(self._root(node), now, out)
        return out

    def _release_oldest(self, now: float) -> None:
        out: list[Span] = []
        while self.held > self.max_spans and self._heap:
            _, _, node = heapq.heappop(self._heap)
            if not node.exported:
                before = len(out)
                self._release(self._root(node), now, out)
                self.stats.released_early += len(out) - before
        self._early.extend(out)

    def take_early(self) -> list[Span]:
        """Spans pushed out by a full hold buffer since the last call."""
        out, self._early = self._early, []
        return out

    def _release(self, root: _Node, now: float, out: list[Span]) -> None:
        trace = root.trace_id or (root.parent.trace_id if root.parent is not None else None)
        if trace is None:
            # A trace of its own: the root keeps the random id the span builder gave it.
            trace = root.span.trace_id if root.span is not None else self._new_trace_id()
        stack = [root]
        while stack:
            node = stack.pop()
            if node.exported:
                continue
            node.trace_id = trace
            stack.extend(node.children)
            span = node.span
            if span is None:
                # A parent that has not arrived: its ids are now reserved for it.
                self.stats.reserved += sum(1 for c in node.children if not c.exported)
                self._reserved_expiry.append((now + RESERVED_RETAIN_S, node))
                continue
            self._finish(node, span, trace, now)
            out.append(span)
        # A reserved placeholder stays a held root (not exported): its span may still come.

    def _finish(self, node: _Node, span: Span, trace: bytes, now: float) -> None:
        span.trace_id = trace
        span.span_id = node.span_id
        parent = node.parent
        if parent is not None:
            span.parent_span_id = parent.span_id
            span.attributes[PARENT_SOURCE] = node.source
            if node.source == "thread":
                self._mark_event_loop(node, parent, span)
        elif not node.external:
            span.parent_span_id = None
            if node.server:
                if node.conn is not None:
                    self._note_uncalled(node.conn)
            elif not node.cause:
                self._thread_candidates(node)
        if node.links:
            span.links.extend(node.links[:MAX_LINKS])
        node.exported = True
        node.span = None
        node.children = ()
        node.links = ()
        node.overlap = None
        self.held -= 1
        # Kept findable a little longer, for a late child (a call that outlived its parent) or a late
        # caller; after that only its ids remain, in the spans already sent.
        self._expiry.append((now + 2 * self.window_s, node))

    def _note_uncalled(self, conn: ConnKey) -> None:
        uncalled = self._uncalled
        if conn in uncalled:
            uncalled.move_to_end(conn)
            return
        uncalled[conn] = None
        if len(uncalled) > MAX_UNCALLED:
            uncalled.popitem(last=False)

    def _note_thread(self, node: _Node) -> None:
        """Pair node with the spans on its thread it overlaps: which server requests were in flight
        when each client request started (the event-loop mark, and links when there is no parent)."""
        key = (node.pid, node.tid)
        start = node.kstart
        oldest = start - REORDER_NS  # the same walk as _overlapping's, inlined: it runs for every span
        if node.server:
            end = node.kend
            for client in reversed(self._thread_clients.get(key) or ()):
                if client.kend < oldest:
                    break
                if not client.exported and start <= client.kstart <= end:
                    _add_overlap(client, node)
            _remember(self._thread_servers, key, node)
        else:
            for server in reversed(self._thread_servers.get(key) or ()):
                if server.kend < oldest:
                    break
                if server.kstart <= start <= server.kend and not server.gone:
                    _add_overlap(node, server)
            _remember(self._thread_clients, key, node)

    def _mark_event_loop(self, node: _Node, parent: _Node, span: Span) -> None:
        if node.overlap and any(s is not parent for s in node.overlap):
            span.attributes[EVENT_LOOP] = True
            self.stats.event_loop += 1

    def _thread_candidates(self, node: _Node) -> None:
        # The kernel found no in-flight request behind this client request, yet the thread was in
        # the middle of some (an event loop after its last-read request was answered): link them.
        if node.overlap:
            self._ambiguous(node, node.overlap, "thread")

    def _expire(self, now: float) -> None:
        for expiry in (self._expiry, self._reserved_expiry):
            while expiry and expiry[0][0] <= now:
                _, node = expiry.popleft()
                if node.gone or (node.span is not None and not node.exported):
                    continue  # already forgotten, or its span came and is held: expires after export
                if not node.exported:
                    self.stats.parents_never_seen += 1
                    self.placeholders -= 1
                self._forget(node)

    def _forget(self, node: _Node) -> None:
        node.gone = True
        if node.server:
            key = (node.pid, node.kstart)
            if self._servers.get(key) is node:
                del self._servers[key]
        if node.server:
            _prune(self._thread_servers, (node.pid, node.tid))
            _prune(self._conn_servers, node.conn)
        else:
            _prune(self._thread_clients, (node.pid, node.tid))
            _prune(self._conn_clients, node.conn)
