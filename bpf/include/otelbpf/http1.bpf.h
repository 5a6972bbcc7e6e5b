/* HTTP/1.x: the detector and the state machine, on the shared connection state (conn.bpf.h).
 *
 * Request and response are paired here. The response is followed through Content-Length, a chunked
 * body's terminator, or the connection's close; a request queued behind another (pipelining) is
 * found in the request capture once its predecessor's response completes (TAIL_HTTP1_PIPELINE).
 * Only the request bytes are captured: the status code travels in the record header.
 *
 * conn_state fields this protocol keeps: left = response body bytes still expected (-1 when not
 * length-delimited; while a long head is scanned, its Content-Length so far), tail = the response
 * stream's last 8 bytes (chunked terminator), pending = where the next head window starts, pflags =
 * HTTP1_*.
 */
#define HTTP1_CHUNKED 0x01
#define HTTP1_HEAD_REQ 0x02 /* request method was HEAD: the response has no body whatever it says */
#define HTTP1_CHECK_PIPELINE 0x04 /* a response completed: look for a queued request */
#define HTTP1_LONG_HEAD 0x08 /* the response head runs past the first window: TAIL_HTTP1_HEAD scans on */
/* Windows of a response head scanned, one tail call each: heads up to about 8 KiB are delimited. */
#define HTTP1_HEAD_WINDOWS 16
/* Windows overlap by this much, so that a header line cut by one window's end is whole in the next. */
#define HTTP1_HEAD_OVERLAP 64

/* 1 for a request line's start, 2 for HEAD, 0 for anything else. */
static __always_inline int http1_method(const char *p)
{
	/* The request line's first bytes; PRI is the HTTP/2 preface, not HTTP/1.x. */
	if (p[0] == 'G' && p[1] == 'E' && p[2] == 'T' && p[3] == ' ')
		return 1;
	if (p[0] == 'P' && p[1] == 'O' && p[2] == 'S' && p[3] == 'T' && p[4] == ' ')
		return 1;
	if (p[0] == 'P' && p[1] == 'U' && p[2] == 'T' && p[3] == ' ')
		return 1;
	if (p[0] == 'H' && p[1] == 'E' && p[2] == 'A' && p[3] == 'D' && p[4] == ' ')
		return 2;
	if (p[0] == 'D' && p[1] == 'E' && p[2] == 'L' && p[3] == 'E' && p[4] == 'T' && p[5] == 'E' &&
	    p[6] == ' ')
		return 1;
	if (p[0] == 'P' && p[1] == 'A' && p[2] == 'T' && p[3] == 'C' && p[4] == 'H' && p[5] == ' ')
		return 1;
	if (p[0] == 'O' && p[1] == 'P' && p[2] == 'T' && p[3] == 'I' && p[4] == 'O' && p[5] == 'N' &&
	    p[6] == 'S')
		return 1;
	if (p[0] == 'C' && p[1] == 'O' && p[2] == 'N' && p[3] == 'N' && p[4] == 'E' && p[5] == 'C' &&
	    p[6] == 'T')
		return 1;
	if (p[0] == 'T' && p[1] == 'R' && p[2] == 'A' && p[3] == 'C' && p[4] == 'E' && p[5] == ' ')
		return 1;
	return 0;
}
static __always_inline int is_status_start(const char *p)
{
	return p[0] == 'H' && p[1] == 'T' && p[2] == 'T' && p[3] == 'P' && p[4] == '/' && p[5] == '1' &&
	       p[6] == '.' && p[8] == ' ';
}

static __always_inline u16 parse_status(const char *p)
{
	u8 a = p[9] - '0', b = p[10] - '0', c = p[11] - '0';
	if (a > 9 || b > 9 || c > 9)
		return 0;
	return a * 100 + b * 10 + c;
}


/* "content-" and "length:" (7 bytes), "transfer" and "-encodin", as little-endian words. */
#define W_CONTENT_ 0x2d746e65746e6f63ULL
#define W_LENGTH_ 0x003a6874676e656cULL
#define W_TRANSFER 0x726566736e617274ULL
#define W__ENCODIN 0x6e69646f636e652dULL
#define LOWER_8 0x2020202020202020ULL
#define LOW_7 0x00ffffffffffffffULL

/* One pass over the header block starting at s->buf[base], up to s->buf[len]: where it ends,
 * Content-Length, Transfer-Encoding (offsets in the results count from s->buf, not from base). The byte loop only looks for line ends; at a line start two 8-byte words
 * are compared with the two header names that matter (lower-cased with | 0x20). Results go to
 * map memory (volatile), so every iteration ends in the same verifier state. */
static __always_inline void scan_head_from(struct scratch *s, u32 base, u32 len)
{
	volatile struct scan_state *ss = &s->ss;
	base &= CAP - 1;
	/* Hide len's range from clang: knowing len < CAP it would drop the constant bound, and the
	 * verifier needs that bound to see the loop end. */
	barrier_var(len);
	ss->cl = -1;
	ss->end = 0;
	ss->chunked = 0;
	ss->cl_pos = 0;
	for (u32 i = 0; i < CAP; i++) {
		u32 idx = base + i;
		barrier_var(idx);
		if (idx >= len)
			break;
		if (s->buf[idx & (2 * CAP - 1)] != '\n')
			continue;
		u32 j = idx + 1; /* a line starts here */
		u8 c = s->buf[j & (2 * CAP - 1)];
		if (c == '\n') {
			ss->end = j + 1;
			break;
		}
		if (c == '\r') {
			ss->end = j + 2; /* the blank line is "\r\n" */
			break;
		}
		c |= 0x20;
		if ((c != 'c' && c != 't') || j + 16 > len)
			continue;
		u64 w0 = 0, w1 = 0;
		bpf_probe_read_kernel(&w0, sizeof(w0), &s->buf[j & (2 * CAP - 1)]);
		bpf_probe_read_kernel(&w1, sizeof(w1), &s->buf[(j + 8) & (2 * CAP - 1)]);
		w0 |= LOWER_8;
		w1 |= LOWER_8;
		if (w0 == W_CONTENT_ && (w1 & LOW_7) == W_LENGTH_)
			ss->cl_pos = j + 15;
		else if (w0 == W_TRANSFER && w1 == W__ENCODIN)
			ss->chunked = 1;
	}
	u32 p = ss->cl_pos;
	if (!p)
		return;
	/* The Content-Length value: optional blanks, then digits. */
	s64 v = 0;
	u32 digits = 0;
	for (u32 k = 0; k < 24; k++) {
		u32 q = p + k;
		if (q >= len)
			break;
		u8 d = s->buf[q & (2 * CAP - 1)];
		if ((d == ' ' || d == '\t') && !digits)
			continue;
		if (d < '0' || d > '9')
			break;
		v = v * 10 + (d - '0');
		digits++;
	}
	if (digits)
		ss->cl = v;
}

/* "0\r\n\r\n" as the last five bytes of the stream, read little-endian from the top of tail. */
static __always_inline int tail_ends_chunked(u64 tail)
{
	return (tail >> 24) == 0x0a0d0a0d30ULL;
}
/* The detector: does a connection's first read or write start an HTTP/1.x request? */
static __always_inline int http1_detect(const char *peek, u64 seglen)
{
	return seglen >= 8 && http1_method(peek);
}

static __always_inline int http1_start(struct conn_state *st, u64 now, int method, u8 flags)
{
	if (!start_request(st, now, flags))
		return 0;
	st->pflags = method == 2 ? HTTP1_HEAD_REQ : 0;
	st->left = -1;
	st->tail = 0;
	return 1;
}

static __always_inline void http1_begin(struct conn_state *st, struct io_args *io, u64 addr, u64 len, u64 now,
					u32 tid, int method)
{
	if (!http1_start(st, now, method, 0))
		return;
	st->ev.p.req_offset = 0;
	st->ev.p.req_len = 0;
	st->ev.h.tid = tid;
	/* A server's request begins when its bytes arrive; a client's when it starts sending. */
	st->ev.h.start_ns = st->role == OTELBPF_ROLE_SERVER ? now : io->enter_ns;
	st->ev.h.end_ns = now;
	capture_request(st, addr, len);
}

/* After a response completes: look for the next request already captured (pipelining). */
static __always_inline void http1_after_response(struct conn_state *st, u64 now)
{
	st->state = ST_IDLE;
	u32 len = st->ev.p.req_len;
	u32 start = st->ev.p.req_offset;
	if (start >= len || start >= CAP || len > CAP)
		return;
	struct scratch *s = get_scratch();
	if (!s)
		return;
	/* The whole request capture, so that the scan can start at `start` with a constant-size copy. */
	bpf_probe_read_kernel(s->buf, CAP, st->ev.p.data);
	scan_head_from(s, start, len);
	u32 end = s->ss.end;
	s64 cl = s->ss.cl;
	if (!end)
		return;
	u64 next = end + (cl > 0 ? cl : 0);
	if (next + 8 > len || next >= CAP)
		return;
	char peek[8] = {};
	bpf_probe_read_kernel(peek, sizeof(peek), &st->ev.p.data[next & (CAP - 1)]);
	int m = http1_method(peek);
	if (!m || !http1_start(st, now, m, OTELBPF_FLAG_PIPELINED))
		return;
	st->ev.p.req_offset = next;
	/* The request was read with its predecessor; it starts when its turn to be served comes. */
	st->ev.h.start_ns = now;
}

static __always_inline void http1_finish(struct conn_state *st, u64 now)
{
	emit(st, now);
	st->state = ST_IDLE;
	/* Only worth a look when more bytes were captured than this request's own. */
	if (st->ev.p.req_len > st->ev.p.req_offset + 16)
		st->pflags |= HTTP1_CHECK_PIPELINE;
}

/* The response head was delimited (end: where its body starts in this syscall's data, 0 if never
 * found): follow the body by its length or chunks, or until the close. */
static __always_inline void http1_head_found(struct conn_state *st, struct io_args *io, u32 end, s64 cl, u32 chunked,
					     u64 ret, u64 now)
{
	u16 status = st->ev.h.status;
	if ((st->pflags & HTTP1_HEAD_REQ) || status == 204 || status == 304) {
		st->left = 0;
	} else if (chunked) {
		st->pflags |= HTTP1_CHUNKED;
	} else if (cl >= 0 && end) {
		st->left = cl - (s64)(ret - end);
	} else {
		st->left = -1;
		st->close_ends = 1; /* HTTP/1.0 style: the close may complete it */
	}
	int is_chunked = st->pflags & HTTP1_CHUNKED;
	if (is_chunked)
		update_tail(st, io, ret);
	if ((!is_chunked && st->left >= 0 && st->left <= 0) || (is_chunked && tail_ends_chunked(st->tail)))
		http1_finish(st, now);
}

/* Response bytes (written by a server, read by a client). */
static __always_inline void http1_response_data(struct conn_state *st, struct io_args *io, u64 addr, u64 seglen,
						u64 ret, u64 now)
{
	if (st->state == ST_REQUEST) {
		if (!addr)
			return; /* sendfile: file bytes, never a status line */
		struct scratch *s = get_scratch();
		if (!s)
			return;
		u32 n = seglen > CAP ? CAP : seglen;
		if (n < 12)
			return;
		if (bpf_probe_read_user(s->buf, n & (2 * CAP - 1), (void *)addr)) {
			count(OTELBPF_STAT_READ_FAULTS);
			return;
		}
		if (!is_status_start(s->buf))
			return;
		u16 status = parse_status(s->buf);
		add_bytes(st, io->dir, ret);
		if (status >= 100 && status < 200 && status != 101)
			return; /* interim response (100 Continue): the real one follows */
		st->ev.h.status = status;
		st->state = ST_RESPONSE;
		st->ev.h.end_ns = now;
		if (status == 101) {
			/* Protocol switch (WebSocket): the connection stops being HTTP/1.x. */
			st->proto = CONN_OTHER;
			emit(st, now);
			st->state = ST_IDLE;
			return;
		}
		scan_head_from(s, 0, n);
		if (!(st->pflags & HTTP1_HEAD_REQ) && status != 204 && status != 304 && !s->ss.end && n == CAP &&
		    seglen > CAP) {
			/* The head goes on past this window: scan the rest, a window per tail call. */
			st->pflags |= HTTP1_LONG_HEAD | (s->ss.chunked ? HTTP1_CHUNKED : 0);
			st->left = s->ss.cl;
			st->pending = CAP - HTTP1_HEAD_OVERLAP;
			return;
		}
		http1_head_found(st, io, s->ss.end, s->ss.cl, s->ss.chunked, ret, now);
		return;
	}
	if (st->state == ST_RESPONSE) {
		add_bytes(st, io->dir, ret);
		st->ev.h.end_ns = now;
		if (st->pflags & HTTP1_CHUNKED) {
			if (io->buf)
				update_tail(st, io, ret);
			if (tail_ends_chunked(st->tail))
				http1_finish(st, now);
		} else if (st->left >= 0) {
			st->left -= ret;
			if (st->left <= 0)
				http1_finish(st, now);
		}
		return;
	}
	/* Idle: a response we did not see the request of. */
	if (st->role == OTELBPF_ROLE_SERVER && addr && seglen >= 12) {
		char p[12] = {};
		if (!bpf_probe_read_user(p, sizeof(p), (void *)addr) && is_status_start(p))
			count(OTELBPF_STAT_ORPHAN_RESPONSES);
	}
}

/* Request bytes (read by a server, written by a client). Returns 1 when a request began. */
static __always_inline int http1_request_data(struct conn_state *st, struct io_args *io, u64 addr, u64 seglen,
					      u64 ret, u64 now, u32 tid, int method)
{
	if (method) {
		if (st->state == ST_REQUEST) {
			/* Another request before the response: pipelined; keep its bytes for later. */
			add_bytes(st, io->dir, ret);
			capture_request(st, addr, seglen);
			return 0;
		}
		if (st->state == ST_RESPONSE) {
			/* The previous response had no delimiter we could follow: it ended here. */
			st->ev.h.end = OTELBPF_END_INFERRED;
			st->ev.h.end_ns = st->last_resp_ns ? st->last_resp_ns : st->ev.h.end_ns;
			emit(st, now);
		}
		http1_begin(st, io, addr, seglen, now, tid, method);
		add_bytes(st, io->dir, ret);
		return 1;
	}
	if (st->state == ST_REQUEST) {
		/* The rest of the request: headers read in pieces, or a body. */
		add_bytes(st, io->dir, ret);
		capture_request(st, addr, seglen);
	}
	return 0;
}

/* The state machine for one read or write the dispatcher handed over (scratch: key, io, now).
 * Returns the next slot: TAIL_HTTP1_HEAD for a head longer than one window, TAIL_HTTP1_PIPELINE when a
 * pipelined request may be waiting, else 0. */
static __always_inline int http1_process(void)
{
	struct scratch *s = get_scratch();
	if (!s)
		return 0;
	struct conn_key key = s->key;
	struct io_args *io = &s->io;
	u64 now = s->now;
	struct conn_state *st = conns.lookup(&key);
	if (!st)
		return 0;
	u64 id = bpf_get_current_pid_tgid();
	u64 addr = 0, seglen = 0;
	u64 ret = io->ret;
	if (first_segment(io, &addr, &seglen, ret))
		return 0;
	char peek[8] = {};
	int method = 0;
	if (addr && seglen >= 8 && !bpf_probe_read_user(peek, sizeof(peek), (void *)addr))
		method = http1_method(peek);
	u8 req_dir = st->role == OTELBPF_ROLE_SERVER ? DIR_IN : DIR_OUT;
	if (io->dir == req_dir) {
		int started = http1_request_data(st, io, addr, seglen, ret, now, (u32)id, method);
		track_cause(st, &key, io, id, started && method);
	} else {
		st->last_resp_ns = now;
		http1_response_data(st, io, addr, seglen, ret, now);
	}
	if (st->pflags & HTTP1_LONG_HEAD)
		return TAIL_HTTP1_HEAD;
	return st->pflags & HTTP1_CHECK_PIPELINE ? TAIL_HTTP1_PIPELINE : 0;
}

/* One more window of a long response head, from the same write (scratch: key, io, now). */
static __always_inline int http1_head_step(void)
{
	struct scratch *s = get_scratch();
	if (!s)
		return 0;
	struct conn_key key = s->key;
	struct conn_state *st = conns.lookup(&key);
	if (!st || !(st->pflags & HTTP1_LONG_HEAD))
		return 0;
	struct io_args *io = &s->io;
	u64 ret = io->ret;
	u64 addr = 0, seglen = 0;
	if (first_segment(io, &addr, &seglen, ret) || !addr)
		return 0;
	u32 start = st->pending;
	u32 window = (start / (CAP - HTTP1_HEAD_OVERLAP)) + 1;
	if (start >= seglen || window >= HTTP1_HEAD_WINDOWS) {
		/* Longer than we scan: end it like a response without a length. */
		st->pflags &= ~HTTP1_LONG_HEAD;
		http1_head_found(st, io, 0, -1, 0, ret, s->now);
		return 0;
	}
	u64 n = seglen - start > CAP ? CAP : seglen - start;
	barrier_var(n);
	if (n > CAP)
		n = CAP;
	if (bpf_probe_read_user(s->buf, n, (void *)(addr + start))) {
		count(OTELBPF_STAT_READ_FAULTS);
		return 0;
	}
	scan_head_from(s, 0, n);
	if (s->ss.cl >= 0)
		st->left = s->ss.cl;
	if (s->ss.chunked)
		st->pflags |= HTTP1_CHUNKED;
	if (s->ss.end) {
		st->pflags &= ~HTTP1_LONG_HEAD;
		http1_head_found(st, io, start + s->ss.end, st->left, st->pflags & HTTP1_CHUNKED, ret, s->now);
		return st->pflags & HTTP1_CHECK_PIPELINE ? TAIL_HTTP1_PIPELINE : 0;
	}
	if (n < CAP) {
		/* The write ended inside the head; its rest comes in a later write, which is not scanned. */
		st->pflags &= ~HTTP1_LONG_HEAD;
		http1_head_found(st, io, 0, -1, 0, ret, s->now);
		return 0;
	}
	st->pending = start + CAP - HTTP1_HEAD_OVERLAP;
	return TAIL_HTTP1_HEAD;
}

/* After a response completed: start the next pipelined request if one is captured. */
static __always_inline void http1_check_pipeline(void)
{
	struct scratch *s = get_scratch();
	if (!s)
		return;
	struct conn_key key = s->key;
	struct conn_state *st = conns.lookup(&key);
	if (!st || !(st->pflags & HTTP1_CHECK_PIPELINE))
		return;
	st->pflags &= ~HTTP1_CHECK_PIPELINE;
	http1_after_response(st, bpf_ktime_get_ns());
}

static __always_inline int http1_step(void)
{
	return http1_process();
}

static __always_inline int http1_pipeline_step(void)
{
	http1_check_pipeline();
	return 0;
}

TAIL_PROGRAMS(http1, http1_step)
TAIL_PROGRAMS(http1_pipeline, http1_pipeline_step)
TAIL_PROGRAMS(http1_head, http1_head_step)
