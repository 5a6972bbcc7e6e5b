/* MySQL and MariaDB (client/server protocol 4.1), client side: the detector and the state machine.
 *
 * Every packet is a 3-byte little-endian length, a sequence number, then the payload. A request is a
 * command packet the client writes (sequence 0: COM_QUERY, COM_STMT_PREPARE, COM_STMT_EXECUTE, ...)
 * or a handshake packet. Its response is one OK or ERR packet, complete once its length has been read,
 * or a result set (also a prepared statement's definitions), complete at a closing EOF packet (or the
 * OK packet that replaces it with CLIENT_DEPRECATE_EOF) whose status has no more results to follow,
 * found at the end of the response stream. The server's greeting on a fresh connection goes to user
 * space as a record of its own: it tells MariaDB from MySQL. protocols/mysql.py reads the statements,
 * remembers prepared ones by id, and takes error codes from ERR packets.
 *
 * Connections opened before otelbpf are recognised by their next command packet: sequence 0, a known
 * command byte, and a length that matches what was written.
 *
 * conn_state fields this protocol keeps: left = bytes of the response's first packet still to come,
 * tail = the response stream's last 8 bytes, pflags = MYSQL_*.
 */
#define MYSQL_RESULT_SET 0x01 /* the response runs until a closing EOF/OK packet */
#define MYSQL_FIRST_SEEN 0x02 /* the response's first packet header was read */
#define MYSQL_PREPARE 0x04 /* the request is a COM_STMT_PREPARE */

#define COM_QUIT 0x01
#define COM_INIT_DB 0x02
#define COM_QUERY 0x03
#define COM_PING 0x0e
#define COM_STMT_PREPARE 0x16
#define COM_STMT_EXECUTE 0x17
#define COM_STMT_SEND_LONG_DATA 0x18
#define COM_STMT_CLOSE 0x19
#define COM_STMT_RESET 0x1a
#define COM_RESET_CONNECTION 0x1f
#define SERVER_MORE_RESULTS_EXISTS 0x0008

static __always_inline u32 mysql_len(u64 w)
{
	return w & 0xffffff;
}

/* A command packet that opens a request on a connection of unknown history. */
static __always_inline int mysql_command(u64 w, u64 seglen)
{
	u32 len = mysql_len(w);
	u8 seq = (w >> 24) & 0xff, cmd = (w >> 32) & 0xff, first = (w >> 40) & 0xff;
	if (seq != 0 || len == 0 || len + 4 != seglen)
		return 0;
	if (cmd == COM_QUERY || cmd == COM_STMT_PREPARE)
		return len > 1 && first >= 0x20 && first < 0x7f; /* SQL text (or a comment) follows */
	if (cmd == COM_STMT_EXECUTE)
		return len >= 10;
	if (cmd == COM_PING || cmd == COM_RESET_CONNECTION)
		return len == 1;
	if (cmd == COM_INIT_DB)
		return len > 1;
	return 0;
}

/* The server's greeting (protocol 10, a version string starting with a digit). */
static __always_inline int mysql_greeting(u64 w, u64 seglen)
{
	u32 len = mysql_len(w);
	u8 seq = (w >> 24) & 0xff, proto = (w >> 32) & 0xff, v = (w >> 40) & 0xff;
	return seq == 0 && proto == 0x0a && v >= '0' && v <= '9' && len + 4 <= seglen && len < 1024;
}

/* The detector: a client's command, or a greeting read on a connection this process opened. */
static __always_inline int mysql_detect(const char *peek, u64 seglen, u8 dir)
{
	if (seglen < 5)
		return 0;
	u64 w = 0;
	__builtin_memcpy(&w, peek, sizeof(w));
	if (seglen < 8)
		w &= (1ULL << (8 * seglen)) - 1;
	return dir == DIR_OUT ? mysql_command(w, seglen) : mysql_greeting(w, seglen);
}

/* The last packet of a result set, at the stream's end: EOF (length 5: 0xfe, warnings, status) or the
 * OK packet with a 0xfe header that replaces it, either with no more results to follow. */
static __always_inline int mysql_result_end(u64 tail)
{
	u8 b[8];
#pragma unroll
	for (int i = 0; i < 8; i++)
		b[i] = (tail >> (8 * i)) & 0xff;
	/* EOF: [05 00 00] seq fe w w s s -> the last 8 bytes are 00 00 seq fe w w s s */
	if (b[0] == 0 && b[1] == 0 && b[3] == 0xfe) {
		u16 status = b[6] | (b[7] << 8);
		return !(status & SERVER_MORE_RESULTS_EXISTS);
	}
	/* OK as EOF: [07 00 00] seq fe 00 00 s s w w -> seq fe 00 00 s s w w */
	if (b[1] == 0xfe && b[2] == 0 && b[3] == 0) {
		u16 status = b[4] | (b[5] << 8);
		return !(status & SERVER_MORE_RESULTS_EXISTS);
	}
	return 0;
}

static __always_inline void mysql_begin(struct conn_state *st, struct io_args *io, u64 addr, u64 seglen, u64 now,
					u64 id)
{
	st->left = 0;
	st->tail = 0;
	st->pflags = 0;
	st->ev.p.req_offset = 0;
	st->ev.p.req_len = 0;
	st->ev.h.tid = (u32)id;
	st->ev.h.start_ns = io->dir == DIR_OUT ? io->enter_ns : now;
	st->ev.h.end_ns = now;
	if (io->dir == DIR_OUT)
		capture_request(st, addr, seglen);
}

static __always_inline void mysql_request_data(struct conn_state *st, struct conn_key *key, struct io_args *io,
					       u64 addr, u64 seglen, u64 now, u64 id)
{
	u64 ret = io->ret;
	if (st->state == ST_REQUEST) {
		/* More of the same packet: a long statement written in pieces. */
		add_bytes(st, io->dir, ret);
		capture_request(st, addr, seglen);
		return;
	}
	u64 w = 0;
	if (seglen < 5 || bpf_probe_read_user(&w, seglen >= 8 ? 8 : 5, (void *)addr))
		return;
	u32 len = mysql_len(w);
	u8 seq = (w >> 24) & 0xff, cmd = (w >> 32) & 0xff;
	/* A command (sequence 0) or the client's part of the handshake (sequence 1 and on). */
	if (len == 0 || seq > 8)
		return;
	if (st->state == ST_RESPONSE) {
		/* The previous response's end was not found (an authentication exchange): it ended here. */
		st->ev.h.end = OTELBPF_END_INFERRED;
		st->ev.h.end_ns = st->last_resp_ns ? st->last_resp_ns : st->ev.h.end_ns;
		emit(st, now);
	}
	if (!start_request(st, now, 0))
		return;
	mysql_begin(st, io, addr, seglen, now, id);
	add_bytes(st, io->dir, ret);
	track_cause(st, key, io, id, 1);
	if (seq == 0 && (cmd == COM_STMT_CLOSE || cmd == COM_STMT_SEND_LONG_DATA || cmd == COM_QUIT)) {
		/* No response comes: the record goes now, so user space learns of it in order. */
		emit(st, now);
		st->state = ST_IDLE;
		return;
	}
	if (seq == 0 && cmd == COM_STMT_PREPARE)
		st->pflags |= MYSQL_PREPARE;
}

static __always_inline void mysql_response_data(struct conn_state *st, struct io_args *io, u64 addr, u64 seglen,
						u64 now, u64 id)
{
	u64 ret = io->ret;
	if (st->state == ST_IDLE) {
		/* Bytes before any request: the greeting of a connection this process opened. */
		u64 w = 0;
		if (seglen < 8 || bpf_probe_read_user(&w, sizeof(w), (void *)addr) || !mysql_greeting(w, seglen))
			return;
		if (!start_request(st, now, 0))
			return;
		mysql_begin(st, io, addr, seglen, now, id);
		add_bytes(st, io->dir, ret);
		capture_response(st, addr, seglen);
		emit(st, now);
		st->state = ST_IDLE;
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
	if (!(st->pflags & MYSQL_FIRST_SEEN)) {
		st->pflags |= MYSQL_FIRST_SEEN;
		u64 w = 0;
		if (seglen < 5 || bpf_probe_read_user(&w, seglen >= 16 ? 8 : 5, (void *)addr)) {
			st->pflags |= MYSQL_RESULT_SET;
			return;
		}
		u8 kind = (w >> 32) & 0xff;
		st->left = (s64)mysql_len(w) + 4;
		if (kind == 0xff || (kind == 0x00 && !(st->pflags & MYSQL_PREPARE))) {
			/* OK or ERR: one packet. */
		} else if (kind == 0x00 && seglen >= 16) {
			/* COM_STMT_PREPARE_OK: definitions follow when it has columns or parameters. */
			u64 w2 = 0;
			bpf_probe_read_user(&w2, sizeof(w2), (void *)(addr + 8));
			/* bytes 8..15: the id's last byte, columns (2), parameters (2), filler, warnings */
			u16 cols = (w2 >> 8) & 0xffff, params = (w2 >> 24) & 0xffff;
			if (cols || params)
				st->pflags |= MYSQL_RESULT_SET;
		} else {
			st->pflags |= MYSQL_RESULT_SET;
		}
	}
	int done;
	if (st->pflags & MYSQL_RESULT_SET) {
		done = mysql_result_end(st->tail);
	} else {
		st->left -= ret;
		done = st->left <= 0;
	}
	if (done) {
		emit(st, now);
		st->state = ST_IDLE;
	}
}

/* The state machine for one read or write the dispatcher handed over (scratch: key, io, now). */
static __always_inline int mysql_step(void)
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
		mysql_request_data(st, &key, io, addr, seglen, s->now, id);
	else
		mysql_response_data(st, io, addr, seglen, s->now, id);
	return 0;
}

TAIL_PROGRAMS(mysql, mysql_step)
