/* HTTPS plaintext from uprobes on TLS libraries: OpenSSL 1.1/3 (SSL_read, SSL_write and their _ex
 * forms, shared libssl or linked statically as in node) and GnuTLS (gnutls_record_recv/send).
 *
 * The entry probe saves the buffer (the return probe no longer has the arguments); the return
 * probe hands the plaintext to the dispatcher plain sockets use (sockets.bpf.c), keyed by the TLS
 * session, through tls_progs: the uprobe-type copy of the tail-call table. Each library file is attached once for every process (uprobes are per inode), so the
 * target filter runs here first.
 *
 * Which socket a session rides on:
 *  - a syscall made inside the call on the same thread (socket BIO: OpenSSL's default, GnuTLS)
 *    is authoritative; sockets.bpf.c notes it in tls_calls;
 *  - otherwise, in a process never seen doing socket I/O inside a call (memory BIO: node does its
 *    socket I/O outside the call), the TLS socket the thread last used stands in. A socket seen
 *    inside a later call replaces such a guess. A socket-BIO process never guesses: a call served
 *    from OpenSSL's buffer (no syscall) would otherwise take whatever socket its event loop
 *    touched last, and the socket arrives with the next call that does I/O.
 * The ciphertext on that socket is never parsed: its first record marks it CONN_TLS.
 */

static __always_inline int tls_enter(struct pt_regs *ctx, u8 dir, u8 lib, u64 len_out)
{
	count(OTELBPF_STAT_TLS_PROBE_HITS);
	u64 id = bpf_get_current_pid_tgid();
	if (!traced(id >> 32))
		return 0;
	struct tls_call tc = {};
	tc.conn = PT_REGS_PARM1(ctx);
	tc.buf = PT_REGS_PARM2(ctx);
	tc.len_out = len_out;
	tc.enter_ns = bpf_ktime_get_ns();
	tc.dir = dir;
	tc.lib = lib;
	if (tls_calls.update(&id, &tc))
		count(OTELBPF_STAT_TLS_TABLE_FULL);
	return 0;
}

/* int SSL_read(SSL *ssl, void *buf, int num) */
int ssl_read_enter(struct pt_regs *ctx)
{
	return tls_enter(ctx, DIR_IN, OTELBPF_TLS_OPENSSL, 0);
}

/* int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes) */
int ssl_read_ex_enter(struct pt_regs *ctx)
{
	return tls_enter(ctx, DIR_IN, OTELBPF_TLS_OPENSSL, PT_REGS_PARM4(ctx));
}

/* int SSL_write(SSL *ssl, const void *buf, int num) */
int ssl_write_enter(struct pt_regs *ctx)
{
	return tls_enter(ctx, DIR_OUT, OTELBPF_TLS_OPENSSL, 0);
}

/* int SSL_write_ex(SSL *ssl, const void *buf, size_t num, size_t *written) */
int ssl_write_ex_enter(struct pt_regs *ctx)
{
	return tls_enter(ctx, DIR_OUT, OTELBPF_TLS_OPENSSL, PT_REGS_PARM4(ctx));
}

/* ssize_t gnutls_record_recv(gnutls_session_t session, void *data, size_t data_size) */
int gnutls_recv_enter(struct pt_regs *ctx)
{
	return tls_enter(ctx, DIR_IN, OTELBPF_TLS_GNUTLS, 0);
}

/* ssize_t gnutls_record_send(gnutls_session_t session, const void *data, size_t data_size) */
int gnutls_send_enter(struct pt_regs *ctx)
{
	return tls_enter(ctx, DIR_OUT, OTELBPF_TLS_GNUTLS, 0);
}

/* Every hooked function returns here: the bytes moved, as the function reports them. */
int tls_return(struct pt_regs *ctx)
{
	count(OTELBPF_STAT_TLS_PROBE_HITS);
	u64 id = bpf_get_current_pid_tgid();
	struct tls_call *tcp = tls_calls.lookup(&id);
	if (!tcp)
		return 0;
	struct tls_call tc = *tcp;
	tls_calls.delete(&id);
	s64 ret;
	if (tc.len_out) {
		/* The _ex forms return 1 on success and store the count through their last argument. */
		ret = -1;
		u64 n = 0;
		if ((int)PT_REGS_RC(ctx) == 1 && !bpf_probe_read_user(&n, sizeof(n), (void *)tc.len_out))
			ret = n;
	} else if (tc.lib == OTELBPF_TLS_GNUTLS) {
		ret = (s64)PT_REGS_RC(ctx); /* ssize_t */
	} else {
		ret = (int)PT_REGS_RC(ctx); /* int: the upper half of rax is not part of the result */
	}
	struct io_args io = {};
	io.tls = tc.conn;
	io.buf = tc.buf;
	io.enter_ns = tc.enter_ns;
	io.dir = tc.dir;
	io.lib = tc.lib;
	io.ret = ret;
	io.sk = tc.sk;
	io.fd = tc.fd;
	u32 tgid = id >> 32;
	if (!io.sk && !tls_socket_bio.lookup(&tgid)) {
		struct tls_sock *ts = thread_tls_sock.lookup(&id);
		if (ts) {
			io.sk = ts->sk;
			io.fd = ts->fd;
			io.sk_inferred = 1;
		}
	}
	if (active_io.update(&id, &io)) {
		count(OTELBPF_STAT_IO_TABLE_FULL);
		return 0;
	}
	tls_progs.call(ctx, TAIL_PROCESS_IO);
	/* Only reached if the tail call failed. */
	active_io.delete(&id);
	return 0;
}

/* Tie the session to the socket io names, unless it is tied already. */
static __always_inline void tls_bind(struct conn_key *key, struct io_args *io, u64 now)
{
	struct conn_state *st = conns.lookup(key);
	if (!io->sk) {
		/* Calls that move no plaintext (want-read during a handshake) need no socket. */
		if (io->ret > 0 && (!st || !st->ev.h.sock_id))
			count(OTELBPF_STAT_TLS_UNBOUND);
		return;
	}
	if (st && st->ev.h.sock_id) {
		if (st->ev.h.sock_id == io->sk) {
			if (!io->sk_inferred)
				st->tls_guessed = 0; /* the guess is confirmed */
			return;
		}
		if (io->sk_inferred)
			return; /* a guess never overrides a tie */
		if (st->tls_guessed) {
			/* The guess was wrong: take the socket seen inside this call. */
			count(OTELBPF_STAT_TLS_REBOUND);
			st->ev.h.sock_id = io->sk;
			st->tls_guessed = 0;
			st->addr_known = 0; /* the dispatcher reads the right addresses */
		} else {
			/* The session's address was freed and reused for a new connection: start afresh. */
			on_conn_end(st, now);
			conns.delete(key);
		}
	}
	/* Link the socket to the session so that the socket's close ends the session's state. */
	struct conn_key skey = {.tgid = key->tgid, .fd = io->fd};
	struct conn_state *ss = conns.lookup(&skey);
	if (ss && ss->ev.h.sock_id == io->sk)
		ss->tls_conn = key->tls;
}

/* One TLS read or write (tail-called from tls_return): the uprobe side's dispatcher slot. */
int tls_process_io(struct pt_regs *ctx)
{
	u64 id = bpf_get_current_pid_tgid();
	struct io_args io;
	if (!take_io(id, &io))
		return 0;
	u64 now = bpf_ktime_get_ns();
	struct conn_key key = {.tgid = id >> 32, .tls = io.tls};
	tls_bind(&key, &io, now);
	tail_call_tls(ctx, dispatch(&key, &io, id, now));
	return 0;
}
