/* The TCP stack's facts about traced connections, from tracepoints only: when a connect() settles
 * (sock:inet_sock_set_state), resets sent and received (tcp:tcp_receive_reset, tcp:tcp_send_reset)
 * and the socket's end (tcp:tcp_destroy_sock). Retransmits and the smoothed RTT are read from the
 * socket when a request starts and ends (conn.bpf.h, tcp_facts_at_end), so nothing here runs per
 * segment: these hooks fire a few times per connection, and a socket no traced process uses costs
 * one hash lookup.
 *
 * A connect() that never reaches ESTABLISHED becomes a record of its own (struct
 * otelbpf_connect_event): refused, timed out, unreachable, or abandoned by the process.
 *
 * Joined after include/otelbpf/conn.bpf.h and the protocol headers, before sockets.bpf.c, which
 * calls tcp_connect_begins() and tcp_connect_returned() from its connect hooks (otelbpf/probes.py).
 */

#define TCP_STATE_ESTABLISHED 1
#define TCP_STATE_SYN_SENT 2
#define TCP_STATE_CLOSE 7
#define OTELBPF_EINPROGRESS 115

/* A traced process calls connect() on a TCP socket: its facts start here, so that a handshake that
 * fails inside a blocking connect() is seen. */
static __always_inline void tcp_connect_begins(u32 fd, u64 id)
{
	if (!TCP_FACTS)
		return;
	u64 sk = fd_tcp_sock(fd);
	if (!sk)
		return;
	struct tcp_sock_facts *old = tcp_socks.lookup(&sk);
	if (old && old->connect_ns && !old->settled_ns)
		return; /* connect() again on a handshake in progress (EALREADY): the first call started it */
	struct tcp_sock_facts f = {};
	f.connect_ns = bpf_ktime_get_ns();
	f.tgid = id >> 32;
	f.tid = (u32)id;
	bpf_get_current_comm(f.comm, sizeof(f.comm));
	struct thread_request *serving = thread_server.lookup(&id);
	if (serving)
		f.cause = *serving;
	tcp_socks.update(&sk, &f);
}

/* Send the record of a failed connect. Straight into the ring buffer, not through per-CPU scratch:
 * the state change that reports it can run in a softirq that interrupted a hook using scratch. */
static __always_inline void tcp_connect_failed(u64 sk, struct tcp_sock_facts *f, s32 err, u64 now)
{
	f->failed = 1;
	f->settled_ns = now;
	/* Counted as a request, so the summary's accounting holds: every one is a span, shed or lost. */
	count(OTELBPF_STAT_REQUESTS);
	u64 cause = 0;
	if (find_cause(&f->cause, f->tgid, &cause) < 0 || !sample_request(now)) {
		/* Its server request was shed, or the rate limit is reached: shed with it, counted. */
		count(OTELBPF_STAT_SAMPLED_OUT);
		return;
	}
	struct otelbpf_connect_event *ev = events.ringbuf_reserve(sizeof(*ev));
	if (!ev) {
		count(OTELBPF_STAT_LOST_RINGBUF_FULL);
		return;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->h.type = OTELBPF_EVENT_CONNECT;
	ev->h.role = OTELBPF_ROLE_CLIENT;
	ev->h.status = err > 0 && err < 0x10000 ? err : 0;
	ev->h.pid = f->tgid;
	ev->h.tid = f->tid;
	ev->h.start_ns = f->connect_ns;
	ev->h.end_ns = now;
	ev->h.cause_ns = cause;
	ev->h.sock_id = sk;
	__builtin_memcpy(ev->h.comm, f->comm, sizeof(ev->h.comm));
	read_sock_addr(&ev->h.conn, sk);
	ev->h.connect_us = (now - f->connect_ns) / 1000;
	ev->h.tcp_flags = OTELBPF_TCP_CONNECT | (f->reset ? OTELBPF_TCP_RESET : 0);
	events.ringbuf_submit(ev, 0);
	count(OTELBPF_STAT_EVENTS);
	count(OTELBPF_STAT_CONNECT_FAILURES);
}

/* Errors of a connect() that failed for good before or during its handshake. Not EINPROGRESS,
 * EALREADY or EISCONN (a non-blocking handshake under way or done), nor EINTR (a blocking one
 * goes on after the signal). */
static __always_inline int connect_failed_for_good(long err)
{
	switch (err) {
	case 1: /* EPERM: a firewall or a BPF program said no */
	case 13: /* EACCES */
	case 99: /* EADDRNOTAVAIL: no local port or address left */
	case 101: /* ENETUNREACH: no route */
	case 110: /* ETIMEDOUT */
	case 111: /* ECONNREFUSED */
	case 113: /* EHOSTUNREACH */
		return 1;
	}
	return 0;
}

/* connect() returned to a traced process. Most failures were reported by the state change already;
 * one that fails before the handshake starts (no route to the host) is reported here. */
static __always_inline void tcp_connect_returned(u32 fd, long ret)
{
	if (!TCP_FACTS || !connect_failed_for_good(-ret))
		return;
	u64 sk = fd_tcp_sock(fd);
	if (!sk)
		return;
	struct tcp_sock_facts *f = tcp_socks.lookup(&sk);
	if (f && f->connect_ns && !f->settled_ns)
		tcp_connect_failed(sk, f, -ret, bpf_ktime_get_ns());
}

#if TCP_FACTS
TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
	/* Only the end of a client's handshake matters here: filtered before any map lookup. */
	if (args->oldstate != TCP_STATE_SYN_SENT || args->protocol != IPPROTO_TCP)
		return 0;
	u64 sk = (u64)args->skaddr;
	struct tcp_sock_facts *f = tcp_socks.lookup(&sk);
	if (!f || !f->connect_ns || f->settled_ns)
		return 0;
	u64 now = bpf_ktime_get_ns();
	if (args->newstate == TCP_STATE_ESTABLISHED) {
		f->settled_ns = now;
	} else if (args->newstate == TCP_STATE_CLOSE) {
		/* The stack sets sk_err before closing: ECONNREFUSED for a reset, ETIMEDOUT when the SYN
		 * retries ran out, EHOSTUNREACH and the like for ICMP. 0: the process closed it first. */
		s32 err = 0;
		bpf_probe_read_kernel(&err, sizeof(err), (void *)(sk + OFF_SK_ERR));
		if (!err) /* an ICMP error met while the process held the socket is kept as soft */
			bpf_probe_read_kernel(&err, sizeof(err), (void *)(sk + OFF_SK_ERR_SOFT));
		tcp_connect_failed(sk, f, err, now);
	}
	return 0;
}

static __always_inline void tcp_note_reset(u64 sk)
{
	struct tcp_sock_facts *f = tcp_socks.lookup(&sk);
	if (f)
		f->reset = 1;
}

TRACEPOINT_PROBE(tcp, tcp_receive_reset)
{
	tcp_note_reset((u64)args->skaddr);
	return 0;
}

/* Attached by hand (otelbpf/probes.py): bcc cannot declare this tracepoint's arguments on kernels
 * whose format names a type the installed headers lack, so its socket is read at an offset taken
 * from the format file (otelbpf/kernel_offsets.py). */
int tcp_send_reset_seen(void *ctx)
{
	u64 sk = 0;
	bpf_probe_read_kernel(&sk, sizeof(sk), (char *)ctx + OFF_TP_SEND_RESET_SKADDR);
	tcp_note_reset(sk);
	return 0;
}

TRACEPOINT_PROBE(tcp, tcp_destroy_sock)
{
	u64 sk = (u64)args->skaddr;
	tcp_socks.delete(&sk);
	return 0;
}
#endif /* TCP_FACTS */
