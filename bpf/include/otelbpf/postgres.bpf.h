/* PostgreSQL (frontend/backend protocol 3), client side: the detector and the state machine.
 *
 * A request is what the client writes before the server answers: one simple Query, or an
 * extended-protocol run (Parse/Bind/Describe/Execute ... Sync), however many statements it pipelines.
 * Its response ends with ReadyForQuery ('Z', length 5, a status byte), found at the end of the
 * response stream. Both sides' first bytes go to user space (protocols/postgres.py), which reads the
 * statements, the SQLSTATE of an ErrorResponse, and the database from a StartupMessage.
 *
 * Connections opened before otelbpf are recognised by their next Query or Parse, checked against the
 * message's own length, so nothing from the startup handshake is needed.
 *
 * conn_state fields this protocol keeps: tail = the response stream's last 8 bytes, pflags = PG_*.
 */
#define PG_SSL_ASKED 0x01 /* an SSLRequest went out: a one-byte 'S' answer turns the socket into TLS */
#define PG_MAX_LEN (1 << 24) /* a longer first message is not worth believing */
#define PG_PROTOCOL_3 0x00030000
#define PG_SSL_REQUEST 80877103
/* Frontend messages counted per write; a longer pipeline still gets its count from user space. */
#define PG_COUNT_MESSAGES 16

static __always_inline u32 pg_be32(const char *p)
{
	return ((u32)(u8)p[0] << 24) | ((u32)(u8)p[1] << 16) | ((u32)(u8)p[2] << 8) | (u32)(u8)p[3];
}

/* The untyped messages a client sends first: StartupMessage (protocol 3.x) or SSLRequest. */
static __always_inline int pg_untyped(const char *p, u64 seglen)
{
	u32 len = pg_be32(p), code = pg_be32(p + 4);
	if (len == 8 && code == PG_SSL_REQUEST && seglen == 8)
		return 2;
	return len >= 8 && len <= 10000 && len == seglen && (code >> 16) == 3;
}

/* A typed message that can start a request, its length agreeing with the bytes written: Query or
 * Parse are what a pooled connection sends next; Bind, Execute and Sync follow a Parse done before. */
static __always_inline int pg_typed(const char *p, u64 seglen, u64 addr)
{
	u8 t = p[0];
	if (t != 'Q' && t != 'P' && t != 'B' && t != 'E')
		return 0;
	u32 len = pg_be32(p + 1);
	if (len < 5 || len >= PG_MAX_LEN || len + 1 > seglen)
		return 0;
	if (len + 1 == seglen)
		return t == 'Q' || t == 'P'; /* a lone Bind or Execute never comes without a Sync after it */
	/* More follows in the same write: it must be another frontend message. */
	char next = 0;
	if (bpf_probe_read_user(&next, 1, (void *)(addr + len + 1)))
		return 0;
	return next == 'B' || next == 'D' || next == 'E' || next == 'S' || next == 'H' || next == 'P' ||
	       next == 'C' || next == 'Q';
}

/* The detector: a client's write that starts a PostgreSQL request. */
static __always_inline int postgres_detect(const char *peek, u64 seglen, u64 addr, u8 dir)
{
	if (dir != DIR_OUT || seglen < 5)
		return 0;
	if (seglen >= 8 && pg_untyped(peek, seglen))
		return 1;
	return pg_typed(peek, seglen, addr);
}

/* Queries and Executes among the first messages of a write: a pipeline's statements. */
static __always_inline u32 pg_count(u64 addr, u64 seglen)
{
	u32 n = 0;
	u64 pos = 0;
	for (int i = 0; i < PG_COUNT_MESSAGES; i++) {
		if (pos + 5 > seglen)
			break;
		char h[5] = {};
		if (bpf_probe_read_user(h, sizeof(h), (void *)(addr + pos)))
			break;
		u32 len = pg_be32(h + 1);
		if (len < 4 || len >= PG_MAX_LEN)
			break;
		if (h[0] == 'Q' || h[0] == 'E')
			n++;
		pos += 1 + len;
	}
	return n;
}

/* "Z", length 5, and a transaction status (Idle, in Transaction, Error) as the stream's last six
 * bytes: the server is ready for the next request. */
static __always_inline int pg_ready(u64 tail)
{
	u8 status = tail >> 56;
	return ((tail >> 16) & 0xffffffffffULL) == 0x050000005aULL && (status == 'I' || status == 'T' || status == 'E');
}

static __always_inline void postgres_request_data(struct conn_state *st, struct conn_key *key, struct io_args *io,
						  u64 addr, u64 seglen, u64 now, u64 id)
{
	u64 ret = io->ret;
	if (st->state == ST_REQUEST) {
		/* More of the same request: libpq may write a pipeline's messages in several writes. */
		add_bytes(st, io->dir, ret);
		capture_request(st, addr, seglen);
		st->ev.p.count += pg_count(addr, seglen);
		return;
	}
	char peek[8] = {};
	if (seglen < 5 || bpf_probe_read_user(peek, seglen >= 8 ? 8 : 5, (void *)addr))
		return;
	if (seglen >= 8 && pg_untyped(peek, seglen) == 2) {
		st->pflags |= PG_SSL_ASKED; /* no request of its own: the answer is one byte */
		return;
	}
	if (!pg_untyped(peek, seglen) && !pg_typed(peek, seglen, addr)) {
		/* After an 'S' answer the socket carries TLS: its plaintext is followed via the library. */
		if (!key->tls && (peek[0] == 0x16 || peek[0] == 0x17) && peek[1] == 0x03)
			st->proto = CONN_TLS;
		return;
	}
	if (st->state == ST_RESPONSE) {
		/* The previous response never showed ReadyForQuery (an authentication exchange): it ended here. */
		st->ev.h.end = OTELBPF_END_INFERRED;
		st->ev.h.end_ns = st->last_resp_ns ? st->last_resp_ns : st->ev.h.end_ns;
		emit(st, now);
	}
	if (!start_request(st, now, 0))
		return;
	st->tail = 0;
	st->ev.p.req_offset = 0;
	st->ev.p.req_len = 0;
	st->ev.h.tid = (u32)id;
	st->ev.h.start_ns = io->enter_ns;
	st->ev.h.end_ns = now;
	capture_request(st, addr, seglen);
	st->ev.p.count = pg_count(addr, seglen);
	add_bytes(st, io->dir, ret);
	track_cause(st, key, io, id, 1);
}

static __always_inline void postgres_response_data(struct conn_state *st, struct io_args *io, u64 addr, u64 seglen,
						   u64 now)
{
	u64 ret = io->ret;
	if (st->pflags & PG_SSL_ASKED) {
		st->pflags &= ~PG_SSL_ASKED;
		char answer = 0;
		if (ret == 1 && !bpf_probe_read_user(&answer, 1, (void *)addr) && answer == 'S')
			st->proto = CONN_TLS;
		return;
	}
	if (st->state != ST_REQUEST && st->state != ST_RESPONSE)
		return;
	st->state = ST_RESPONSE;
	st->last_resp_ns = now;
	st->ev.h.end_ns = now;
	add_bytes(st, io->dir, ret);
	capture_response(st, addr, seglen);
	update_tail(st, io, ret);
	if (pg_ready(st->tail)) {
		emit(st, now);
		st->state = ST_IDLE;
	}
}

/* The state machine for one read or write the dispatcher handed over (scratch: key, io, now). */
static __always_inline int postgres_step(void)
{
	struct scratch *s = get_scratch();
	if (!s)
		return 0;
	struct conn_key key = s->key;
	struct io_args *io = &s->io;
	struct conn_state *st = conns.lookup(&key);
	if (!st || st->role != OTELBPF_ROLE_CLIENT)
		return 0;
	u64 addr = 0, seglen = 0;
	if (first_segment(io, &addr, &seglen, io->ret) || !addr)
		return 0;
	u64 id = bpf_get_current_pid_tgid();
	if (io->dir == DIR_OUT)
		postgres_request_data(st, &key, io, addr, seglen, s->now, id);
	else
		postgres_response_data(st, io, addr, seglen, s->now);
	return 0;
}

TAIL_PROGRAMS(postgres, postgres_step)
