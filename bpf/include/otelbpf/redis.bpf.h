/* Redis (RESP2 and RESP3), client side: the detector and the state machine.
 *
 * A request is what the client writes before the first reply: one command, or a pipeline of them.
 * The commands are counted as they are written (top-level arrays, their bulk strings skipped by their
 * length), and the response ends once as many replies have been read, nested aggregates included. A
 * walk that cannot keep in step (more elements in one read than it follows, a header split between
 * reads) falls back to ending the response at a read that ends a line. User space
 * (protocols/redis.py) reads the commands and any error reply from the captures; values never leave
 * the record's bytes.
 *
 * conn_state fields this protocol keeps: left = bytes of a bulk string still to skip at the start of
 * the next read; pending = replies (and nested elements) still expected; pflags = REDIS_*.
 */
#define REDIS_LOST_STEP 0x01 /* the reply walk lost its place: end at the next read that ends a line */
/* Elements followed per read or write: a longer pipeline is still one request, its replies found by
 * the fallback. */
#define REDIS_MAX_ELEMENTS 16
/* "$99999\r\n" at most: a longer header (a bigger blob, a long simple string) ends the walk. */
#define REDIS_HEADER_BYTES 8

/* "*<digits>\r\n$": an array of bulk strings, which is how every client sends commands. Compared as
 * one little-endian word: clang turns byte-by-byte tests into pointer arithmetic the verifier refuses. */
static __always_inline int redis_detect(const char *p, u64 seglen, u8 dir)
{
	if (dir != DIR_OUT || seglen < 8)
		return 0;
	u64 w = 0;
	__builtin_memcpy(&w, p, sizeof(w));
	u8 c1 = (w >> 8) & 0xff, c2 = (w >> 16) & 0xff;
	if ((w & 0xff) != '*' || c1 < '0' || c1 > '9')
		return 0;
	if (((w >> 16) & 0xffffff) == 0x240a0dULL)
		return 1; /* "*3\r\n$" */
	return c2 >= '0' && c2 <= '9' && ((w >> 24) & 0xffffff) == 0x240a0dULL; /* "*12\r\n$" */
}

/* One RESP header at addr: its type byte, its number (length or count; -1 for none) and the header's
 * length including "\r\n". Returns 0 when no whole header is within REDIS_HEADER_BYTES. The bytes are
 * read as one word and taken apart with shifts: indexing a stack array in an unrolled loop makes clang
 * emit pointer arithmetic the verifier refuses. */
static __always_inline int redis_header(u64 addr, u64 avail, char *type, s64 *value, u32 *len)
{
	u64 w = 0;
	u32 n = avail < REDIS_HEADER_BYTES ? avail : REDIS_HEADER_BYTES;
	/* A constant-size read; bytes past the data are never looked at (n bounds the scan). */
	if (n < 3 || bpf_probe_read_user(&w, sizeof(w), (void *)addr))
		return 0;
	*type = w & 0xff;
	s64 v = 0;
	int neg = 0, digits = 0;
	for (u32 i = 1; i < REDIS_HEADER_BYTES - 1; i++) {
		if (i + 1 >= n)
			return 0;
		u8 c = (w >> (8 * i)) & 0xff;
		if (c == '\r') {
			if (((w >> (8 * (i + 1))) & 0xff) != '\n')
				return 0;
			*value = digits ? (neg ? -v : v) : -1;
			*len = i + 2;
			return 1;
		}
		if (c == '-' && i == 1) {
			neg = 1;
		} else if (c >= '0' && c <= '9') {
			v = v * 10 + (c - '0');
			digits++;
		} else {
			digits = 0; /* a simple string or an error: its text, not a number */
			v = 0;
		}
	}
	return 0;
}

/* Walk the RESP elements of one read or write. `pending` counts elements still expected (top-level
 * ones for a write, counted up). Returns the elements completed, or -1 when the walk lost its place. */
static __always_inline int redis_walk(struct conn_state *st, u64 addr, u64 seglen, int writing, u32 *commands)
{
	u64 pos = st->left > 0 ? (u64)st->left : 0;
	if (pos >= seglen) {
		st->left -= seglen;
		return 0;
	}
	st->left = 0;
	for (int i = 0; i < REDIS_MAX_ELEMENTS; i++) {
		if (pos >= seglen)
			return 0;
		char type = 0;
		s64 value = 0;
		u32 hlen = 0;
		if (!redis_header(addr + pos, seglen - pos, &type, &value, &hlen))
			return -1;
		pos += hlen;
		if (type == '$' || type == '=' || type == '!') {
			/* A blob: its bytes and "\r\n" follow, maybe beyond this read. */
			if (value >= 0) {
				u64 skip = value + 2;
				if (pos + skip > seglen) {
					st->left = pos + skip - seglen;
					pos = seglen;
				} else {
					pos += skip;
				}
			}
		} else if (type == '*' || type == '~' || type == '>' || type == '%' || type == '|') {
			if (writing && type == '*')
				(*commands)++;
			if (!writing && value > 0)
				st->pending += type == '%' || type == '|' ? 2 * value : value;
			if (writing)
				continue;
		} else if (writing) {
			return -1; /* commands are arrays of bulk strings */
		} else if (hlen > REDIS_HEADER_BYTES - 1) {
			return -1;
		}
		if (!writing) {
			if (type == '|')
				continue; /* attributes precede the reply they describe */
			if (st->pending > 0)
				st->pending--;
			if (st->pending == 0)
				return 1;
		}
	}
	return -1;
}

/* Client bytes. Returns 1 when they belong to the request in flight and must be walked. */
static __always_inline int redis_request_data(struct conn_state *st, struct conn_key *key, struct io_args *io,
					      u64 addr, u64 seglen, u64 now, u64 id)
{
	u64 ret = io->ret;
	if (st->state == ST_REQUEST) {
		add_bytes(st, io->dir, ret);
		capture_request(st, addr, seglen);
		return 1;
	}
	char peek[8] = {};
	if (seglen < 8 || bpf_probe_read_user(peek, sizeof(peek), (void *)addr) || !redis_detect(peek, seglen, DIR_OUT))
		return 0;
	if (st->state == ST_RESPONSE) {
		/* The replies were not all seen (the walk lost its place mid-read): they ended here. */
		st->ev.h.end = OTELBPF_END_INFERRED;
		st->ev.h.end_ns = st->last_resp_ns ? st->last_resp_ns : st->ev.h.end_ns;
		emit(st, now);
	}
	if (!start_request(st, now, 0))
		return 0;
	st->left = 0;
	st->tail = 0;
	st->pending = 0;
	st->pflags = 0;
	st->ev.p.req_offset = 0;
	st->ev.p.req_len = 0;
	st->ev.h.tid = (u32)id;
	st->ev.h.start_ns = io->enter_ns;
	st->ev.h.end_ns = now;
	capture_request(st, addr, seglen);
	add_bytes(st, io->dir, ret);
	track_cause(st, key, io, id, 1);
	return 1;
}

/* Server bytes. Returns 1 when they answer the request in flight and must be walked. */
static __always_inline int redis_response_data(struct conn_state *st, struct io_args *io, u64 addr, u64 seglen,
					       u64 now)
{
	if (st->state != ST_REQUEST && st->state != ST_RESPONSE)
		return 0;
	if (st->state == ST_REQUEST) {
		/* The first reply: expect one per command, and walk the replies from the start. */
		st->state = ST_RESPONSE;
		st->left = 0;
		st->pending = st->ev.p.count ? st->ev.p.count : 1;
	}
	st->last_resp_ns = now;
	st->ev.h.end_ns = now;
	add_bytes(st, io->dir, io->ret);
	capture_response(st, addr, seglen);
	return 1;
}

/* The state machine for one read or write the dispatcher handed over (scratch: key, io, now). The walk
 * has one call site: each inlined copy would be verified again. */
static __always_inline int redis_step(void)
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
	int writing = io->dir == DIR_OUT;
	int walk = writing ? redis_request_data(st, &key, io, addr, seglen, s->now, id)
			   : redis_response_data(st, io, addr, seglen, s->now);
	if (!walk)
		return 0;
	int walked = -1;
	u32 commands = 0;
	if (!(st->pflags & REDIS_LOST_STEP))
		walked = redis_walk(st, addr, seglen, writing, &commands);
	if (walked < 0)
		st->pflags |= REDIS_LOST_STEP;
	if (writing) {
		st->ev.p.count += commands;
		return 0;
	}
	int done = walked > 0;
	if (st->pflags & REDIS_LOST_STEP) {
		update_tail(st, io, io->ret);
		done = (st->tail >> 48) == 0x0a0d; /* the read ended a line */
	}
	if (done) {
		emit(st, s->now);
		st->state = ST_IDLE;
	}
	return 0;
}

TAIL_PROGRAMS(redis, redis_step)
