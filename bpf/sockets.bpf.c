/* The syscall and socket hooks: which processes are traced, every socket read and write, and the
 * connection lifecycle (accept, connect, close). No kprobes, only tracepoints.
 *
 * Per syscall: sys_enter_* saves the user buffer (the return probe no longer has the arguments),
 * sock:sock_{recv,send}_length tells us the fd is a TCP socket and gives its struct sock, and
 * sys_exit_* tail-calls the dispatcher (process_io). The dispatcher finds the connection, decides
 * its protocol from its first bytes, and tail-calls that protocol's state machine
 * (include/otelbpf/<protocol>.bpf.h), which pairs request and response; one record per finished
 * request crosses the ring buffer. TLS plaintext from tls.bpf.c takes the same path, keyed by the
 * TLS session instead of the fd; this file tells it which socket a session rides on.
 *
 * Joined after include/otelbpf/conn.bpf.h and the protocol headers (otelbpf/probes.py). Tunables
 * come in as -D flags; kernel struct offsets (OFF_*) come from the running kernel's BTF because the
 * installed headers may belong to another kernel.
 */

/* ---- process selection ---- */

/* Process events for the thread that keeps TLS libraries hooked (otelbpf/tls_follow.py). */
#ifndef TASK_RINGBUF_PAGES
#define TASK_RINGBUF_PAGES 64
#endif
#define OTELBPF_CLONE_THREAD 0x00010000
#define OTELBPF_PROT_EXEC 0x4
#define OTELBPF_MAP_ANONYMOUS 0x20
/* Their own ring, each record waking the reader at once: a new program must be hooked before it
 * makes its first TLS call, whatever the request traffic on the main ring. */
BPF_RINGBUF_OUTPUT(task_events, TASK_RINGBUF_PAGES);
/* Processes that have per-process TLS probes (tgid -> 1, written by user space): their end is
 * reported so that the probes are taken down. */
BPF_HASH(hooked_tgids, u32, u8, MAX_TARGETS);
/* Threads inside an mmap of a file as executable, by thread id: reported once the mapping exists. */
BPF_TABLE("lru_hash", u64, u8, exec_mmaps, 4096);

static __always_inline u32 tls_follow(void)
{
	u32 zero = 0;
	struct config *cfg = config_map.lookup(&zero);
	return cfg ? cfg->tls_follow : FOLLOW_NONE;
}

static __always_inline void report_task(u8 kind, u32 pid, u32 parent)
{
	struct otelbpf_task_event *ev = task_events.ringbuf_reserve(sizeof(*ev));
	if (!ev) {
		count(OTELBPF_STAT_TASK_EVENTS_LOST);
		return;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->type = OTELBPF_EVENT_TASK;
	ev->kind = kind;
	ev->pid = pid;
	ev->parent = parent;
	ev->ns = bpf_ktime_get_ns();
	task_events.ringbuf_submit(ev, BPF_RB_FORCE_WAKEUP);
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
	struct comm_key key = {};
	bpf_get_current_comm(&key.comm, sizeof(key.comm));
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (target_comms.lookup(&key)) {
		u8 one = 1;
		if (targets.update(&tgid, &one))
			count(OTELBPF_STAT_TARGETS_FULL);
	}
	if (!traced(tgid))
		return 0;
	if (tls_follow() != FOLLOW_NONE)
		report_task(OTELBPF_TASK_EXEC, tgid, 0);
	/* Describe the new program now: a short-lived process is gone before user space reads /proc. */
	struct otelbpf_process_event *ev = events.ringbuf_reserve(sizeof(*ev));
	if (!ev) {
		count(OTELBPF_STAT_LOST_RINGBUF_FULL);
		return 0;
	}
	ev->type = OTELBPF_EVENT_PROCESS;
	ev->pid = tgid;
	__builtin_memcpy(ev->comm, key.comm, sizeof(ev->comm));
	unsigned short loc = args->data_loc_filename & 0xFFFF;
	long n = bpf_probe_read_kernel_str(ev->filename, sizeof(ev->filename), (char *)args + loc);
	ev->filename_len = n > 0 ? n : 0;
	/* argv lives in the new program's memory between mm->arg_start and mm->arg_end (offsets from BTF). */
	u64 task = (u64)bpf_get_current_task();
	u64 mm = 0, start = 0, end = 0;
	ev->args_len = 0;
	if (!bpf_probe_read_kernel(&mm, sizeof(mm), (void *)(task + OFF_TASK_MM)) && mm &&
	    !bpf_probe_read_kernel(&start, sizeof(start), (void *)(mm + OFF_MM_ARG_START)) &&
	    !bpf_probe_read_kernel(&end, sizeof(end), (void *)(mm + OFF_MM_ARG_END)) && end > start) {
		u64 len = end - start;
		if (len > OTELBPF_ARGS_LEN)
			len = OTELBPF_ARGS_LEN;
		if (!bpf_probe_read_user(ev->args, len & (2 * OTELBPF_ARGS_LEN - 1), (void *)start))
			ev->args_len = len;
	}
	events.ringbuf_submit(ev, 0);
	return 0;
}

TRACEPOINT_PROBE(sched, sched_process_fork)
{
	/* Children of a target are targets: nginx and gunicorn workers are forked. */
	u32 parent = bpf_get_current_pid_tgid() >> 32;
	if (!targets.lookup(&parent))
		return 0;
	u32 child = args->child_pid;
	u8 one = 1;
	if (targets.update(&child, &one))
		count(OTELBPF_STAT_TARGETS_FULL);
	return 0;
}

/* A new process (not a thread: threads share their process's probes) forked by a traced one. */
TRACEPOINT_PROBE(task, task_newtask)
{
	if (args->clone_flags & OTELBPF_CLONE_THREAD)
		return 0;
	u32 parent = bpf_get_current_pid_tgid() >> 32;
	if (tls_follow() == FOLLOW_ALL && traced(parent))
		report_task(OTELBPF_TASK_FORK, args->pid, parent);
	return 0;
}

/* A traced process mapping a file as executable: the loader bringing in a library, or dlopen. */
TRACEPOINT_PROBE(syscalls, sys_enter_mmap)
{
	if (!(args->prot & OTELBPF_PROT_EXEC) || (args->flags & OTELBPF_MAP_ANONYMOUS) || (int)args->fd < 0)
		return 0;
	u64 id = bpf_get_current_pid_tgid();
	if (tls_follow() != FOLLOW_ALL || !traced(id >> 32))
		return 0;
	u8 one = 1;
	exec_mmaps.update(&id, &one);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_mmap)
{
	u64 id = bpf_get_current_pid_tgid();
	if (!exec_mmaps.lookup(&id))
		return 0;
	exec_mmaps.delete(&id);
	/* Reported once the mapping exists, so that user space finds it in /proc/PID/maps. */
	if (args->ret >= 0 || args->ret < -4095)
		report_task(OTELBPF_TASK_MAP, id >> 32, 0);
	return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
	/* Threads enter the table through the fork hook too; drop each id as its task ends. */
	u32 pid = args->pid;
	targets.delete(&pid);
	u64 id = bpf_get_current_pid_tgid();
	if (args->group_dead) {
		u32 tgid = id >> 32;
		if (hooked_tgids.lookup(&tgid)) {
			hooked_tgids.delete(&tgid);
			report_task(OTELBPF_TASK_EXIT, tgid, 0);
		}
	}
	/* A thread that dies inside a call never reaches the return probe or sys_exit: without this,
	 * its entries would hold a slot in the per-thread tables for the rest of the run. */
	exec_mmaps.delete(&id);
	active_io.delete(&id);
	active_sock_call.delete(&id);
	tls_calls.delete(&id);
	thread_tls_sock.delete(&id);
	thread_server.delete(&id);
	return 0;
}

/* ---- syscall plumbing ---- */

/* A socket syscall made inside a TLS call on the same thread is that session's own socket. */
static __always_inline void tls_note_socket(u64 id, u32 fd, u64 sk)
{
	struct tls_call *tc = tls_calls.lookup(&id);
	if (tc) {
		tc->sk = sk;
		tc->fd = fd;
		u32 tgid = id >> 32;
		if (!tls_socket_bio.lookup(&tgid)) {
			u8 one = 1;
			tls_socket_bio.update(&tgid, &one);
		}
	}
}

static __always_inline int save_io(u32 fd, u64 buf, u32 iovcnt, u8 dir)
{
	u64 id = bpf_get_current_pid_tgid();
	if (!traced(id >> 32))
		return 0;
	struct io_args io = {};
	io.fd = fd;
	io.buf = buf;
	io.iovcnt = iovcnt > MAX_IOV ? MAX_IOV : iovcnt;
	io.dir = dir;
	io.enter_ns = bpf_ktime_get_ns();
	if (active_io.update(&id, &io))
		count(OTELBPF_STAT_IO_TABLE_FULL);
	return 0;
}

static __always_inline int save_msg(u32 fd, u64 msg, u8 dir)
{
	/* struct user_msghdr is ABI: msg_iov at 16, msg_iovlen at 24 on 64-bit. */
	u64 iov = 0, iovlen = 0;
	bpf_probe_read_user(&iov, sizeof(iov), (void *)(msg + 16));
	bpf_probe_read_user(&iovlen, sizeof(iovlen), (void *)(msg + 24));
	if (!iov || !iovlen)
		return 0;
	return save_io(fd, iov, iovlen, dir);
}

static __always_inline void mark_socket(void *sk, u16 family, u16 protocol)
{
	if (protocol != IPPROTO_TCP || (family != AF_INET && family != AF_INET6))
		return;
	u64 id = bpf_get_current_pid_tgid();
	struct io_args *io = active_io.lookup(&id);
	if (io) {
		io->sk = (u64)sk;
		io->family = family;
	}
}

TRACEPOINT_PROBE(sock, sock_recv_length)
{
	mark_socket(args->sk, args->family, args->protocol);
	return 0;
}

TRACEPOINT_PROBE(sock, sock_send_length)
{
	mark_socket(args->sk, args->family, args->protocol);
	return 0;
}


static __always_inline int handle_io_exit(void *ctx, long ret)
{
	u64 id = bpf_get_current_pid_tgid();
	struct io_args *io = active_io.lookup(&id);
	if (!io)
		return 0;
	if (!io->sk || ret < 0) {
		active_io.delete(&id);
		return 0; /* not a TCP socket, or nothing transferred */
	}
	/* A socket syscall inside SSL_read/SSL_write (socket BIO): that is the session's socket. */
	tls_note_socket(id, io->fd, io->sk);
	io->ret = ret;
	progs.call(ctx, TAIL_PROCESS_IO);
	/* Only reached if the tail call failed. */
	active_io.delete(&id);
	return 0;
}

/* The first bytes each protocol's detector sees: which protocol a connection carries. One line per
 * protocol; the first match wins, so a cheap and specific detector goes first. */
static __always_inline int detect_protocol(const char *peek, u64 seglen, u64 addr, u8 dir)
{
	if (http1_detect(peek, seglen))
		return OTELBPF_PROTO_HTTP1;
	if (postgres_detect(peek, seglen, addr, dir))
		return OTELBPF_PROTO_POSTGRES;
	if (redis_detect(peek, seglen, dir))
		return OTELBPF_PROTO_REDIS;
	if (mysql_detect(peek, seglen, dir))
		return OTELBPF_PROTO_MYSQL;
	return OTELBPF_PROTO_UNKNOWN;
}

/* A TLS record header: handshake (22) on a fresh connection, or application data (23) on one
 * that was open before otelbpf started; version 3.x. */
static __always_inline int is_tls_start(const char *p)
{
	return (p[0] == 0x16 || p[0] == 0x17) && p[1] == 0x03 && (u8)p[2] <= 0x04;
}

/* One read or write of a traced process, from a socket or from a TLS library (key->tls set): find
 * or adopt its connection and decide its protocol. Returns the tail-call slot of the protocol's
 * state machine, with the read or write left in scratch for it, or 0 when there is nothing to do. */
static __always_inline int dispatch(struct conn_key *key, struct io_args *io, u64 id, u64 now)
{
	long ret = io->ret;
	struct conn_state *st = conns.lookup(key);
	/* TLS sessions are matched to their socket in tls.bpf.c; only an fd can be reused here. */
	if (st && (key->tls || st->ev.h.sock_id == io->sk)) {
		if (st->proto == CONN_OTHER)
			return 0; /* known non-traced connection: ignored cheaply */
		if (st->proto == CONN_TLS) {
			/* Ciphertext: never parsed, but a memory-BIO library's plaintext will follow. */
			struct tls_sock ts = {.sk = io->sk, .fd = io->fd};
			thread_tls_sock.update(&id, &ts);
			return 0;
		}
		u8 resp_dir = st->role == OTELBPF_ROLE_SERVER ? DIR_OUT : DIR_IN;
		if (st->state == ST_SKIP && io->dir == resp_dir && ret > 0)
			return 0; /* the response of a shed request: nothing to do */
	}
	if (ret <= 0) {
		if (ret == 0 && io->dir == DIR_IN && st && (key->tls || st->ev.h.sock_id == io->sk)) {
			/* EOF: the peer is done. A client can finish now; a server may still answer. */
			st->peer_closed = 1;
			if (st->role == OTELBPF_ROLE_CLIENT)
				on_conn_end(st, now);
		}
		return 0;
	}
	if (!key->tls && st && st->ev.h.sock_id && st->ev.h.sock_id != io->sk) {
		/* The fd now names another socket (its close was not seen): start afresh. */
		on_conn_end(st, now);
		conns.delete(key);
		st = NULL;
	}
	if (!st || st->proto == CONN_UNDECIDED) {
		u64 addr = 0, seglen = 0;
		if (first_segment(io, &addr, &seglen, ret))
			return 0;
		char peek[8] = {};
		if (addr && seglen >= 8)
			bpf_probe_read_user(peek, sizeof(peek), (void *)addr);
		else if (addr && seglen >= 3 && !key->tls)
			bpf_probe_read_user(peek, 3, (void *)addr); /* a 5-byte TLS record header read alone */
		u8 proto = detect_protocol(peek, seglen, addr, io->dir);
		if (!proto) {
			if (!key->tls && seglen >= 3 && is_tls_start(peek))
				proto = CONN_TLS;
			else if (st)
				proto = CONN_OTHER; /* a fresh connection's first bytes decide */
			else
				return 0; /* not a request start: maybe the next one */
		}
		if (!st) {
			/* A connection that predates otelbpf or whose accept/connect we missed: adopted at a
			 * request start (the direction tells the role), or at a TLS handshake. */
			st = new_conn(key, io->dir == DIR_IN ? OTELBPF_ROLE_SERVER : OTELBPF_ROLE_CLIENT, proto, 0);
			if (!st)
				return 0;
		}
		st->proto = proto;
		st->ev.h.tls = io->lib;
	}
	if (!st->ev.h.sock_id && io->sk) {
		st->ev.h.sock_id = io->sk;
		tcp_track(io->sk); /* adopted: open before otelbpf, or its accept or connect unseen */
		st->tls_guessed = io->sk_inferred;
		if (io->sk_inferred)
			count(OTELBPF_STAT_TLS_GUESSED);
	}
	if (st->proto >= OTELBPF_PROTO_MAX)
		return 0; /* CONN_TLS or CONN_OTHER */
	if (!st->addr_known && io->sk) {
		read_sock_addr(&st->ev.h.conn, io->sk);
		st->addr_known = 1;
		if (st->role == OTELBPF_ROLE_SERVER && is_own_conn(&st->ev.h.conn)) {
			/* The server end of otelbpf's own export: ignored for the connection's life. */
			st->proto = CONN_OTHER;
			count(OTELBPF_STAT_OWN_CONNS);
			return 0;
		}
	}
	struct scratch *s = get_scratch();
	if (!s)
		return 0;
	s->key = *key;
	s->io = *io;
	s->now = now;
	return TAIL_PROTOCOL(st->proto);
}

/* One socket read or write (tail-called from every sys_exit hook). */
int process_io(void *ctx)
{
	u64 id = bpf_get_current_pid_tgid();
	struct io_args io;
	if (!take_io(id, &io))
		return 0;
	struct conn_key key = {.tgid = id >> 32, .fd = io.fd};
	tail_call_sock(ctx, dispatch(&key, &io, id, bpf_ktime_get_ns()));
	return 0;
}

#define IO_PROBES(name, dir, fdexpr, bufexpr, cntexpr)                                            \
	TRACEPOINT_PROBE(syscalls, sys_enter_##name)                                               \
	{                                                                                          \
		return save_io(fdexpr, (u64)(bufexpr), cntexpr, dir);                               \
	}                                                                                          \
	TRACEPOINT_PROBE(syscalls, sys_exit_##name)                                                \
	{                                                                                          \
		return handle_io_exit(args, args->ret);                                            \
	}

IO_PROBES(read, DIR_IN, args->fd, args->buf, 0)
IO_PROBES(recvfrom, DIR_IN, args->fd, args->ubuf, 0)
IO_PROBES(readv, DIR_IN, args->fd, args->vec, args->vlen)
IO_PROBES(write, DIR_OUT, args->fd, args->buf, 0)
IO_PROBES(sendto, DIR_OUT, args->fd, args->buff, 0)
IO_PROBES(writev, DIR_OUT, args->fd, args->vec, args->vlen)

/* sendfile: response bodies straight from a file (nginx static files). Its bytes count toward the
 * response; there is no user buffer to look at, so buf stays 0. */
TRACEPOINT_PROBE(syscalls, sys_enter_sendfile64)
{
	return save_io(args->out_fd, 0, 0, DIR_OUT);
}
TRACEPOINT_PROBE(syscalls, sys_exit_sendfile64)
{
	return handle_io_exit(args, args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_enter_recvmsg)
{
	return save_msg(args->fd, (u64)args->msg, DIR_IN);
}
TRACEPOINT_PROBE(syscalls, sys_exit_recvmsg)
{
	return handle_io_exit(args, args->ret);
}
TRACEPOINT_PROBE(syscalls, sys_enter_sendmsg)
{
	return save_msg(args->fd, (u64)args->msg, DIR_OUT);
}
TRACEPOINT_PROBE(syscalls, sys_exit_sendmsg)
{
	return handle_io_exit(args, args->ret);
}

/* ---- connection lifecycle ---- */

static __always_inline int save_sock_call(u32 fd)
{
	u64 id = bpf_get_current_pid_tgid();
	/* otelbpf's own connects are followed too, only to learn their addresses (own_conns). */
	int sel = selection(id >> 32);
	if (sel == UNTRACED)
		return 0;
	active_sock_call.update(&id, &fd);
	if (sel == TRACED)
		tcp_connect_begins(fd, id);
	return 0;
}

static __always_inline int connected(long ret)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 *fdp = active_sock_call.lookup(&id);
	if (!fdp)
		return 0;
	u32 fd = *fdp;
	active_sock_call.delete(&id);
	if (is_self(id >> 32)) {
		if (ret == 0 || ret == -OTELBPF_EINPROGRESS)
			remember_own_conn(fd);
		return 0;
	}
	tcp_connect_returned(fd, ret);
	/* A non-blocking connect returns -EINPROGRESS and completes later; its ports are chosen. */
	if (ret != 0 && ret != -OTELBPF_EINPROGRESS)
		return 0;
	/* UDP and Unix sockets connect too; only TCP gets connection state. */
	u64 sk = fd_tcp_sock(fd);
	if (!sk)
		return 0;
	struct conn_key key = {.tgid = id >> 32, .fd = fd};
	struct conn_state *old = conns.lookup(&key);
	if (old)
		on_conn_end(old, bpf_ktime_get_ns());
	struct conn_state *st = new_conn(&key, OTELBPF_ROLE_CLIENT, CONN_UNDECIDED, sk);
	struct thread_request *serving = thread_server.lookup(&id);
	if (st && serving)
		st->cause = *serving; /* checked when the first request starts */
	return 0;
}

/* accept needs nothing from its entry: the new fd is the return value. Doing it all at exit also
 * covers a server already blocked in accept() when otelbpf attached. */
static __always_inline int accepted(long ret)
{
	u64 id = bpf_get_current_pid_tgid();
	if (ret < 0 || !traced(id >> 32))
		return 0;
	/* Unix stream sockets accept too; only TCP gets connection state. */
	u64 sk = fd_tcp_sock((u32)ret);
	if (!sk)
		return 0;
	tcp_track(sk);
	struct conn_key key = {.tgid = id >> 32, .fd = (u32)ret};
	struct conn_state *old = conns.lookup(&key);
	if (old)
		on_conn_end(old, bpf_ktime_get_ns());
	new_conn(&key, OTELBPF_ROLE_SERVER, CONN_UNDECIDED, sk);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_accept)
{
	return accepted(args->ret);
}
TRACEPOINT_PROBE(syscalls, sys_exit_accept4)
{
	return accepted(args->ret);
}
TRACEPOINT_PROBE(syscalls, sys_enter_connect)
{
	return save_sock_call(args->fd);
}
TRACEPOINT_PROBE(syscalls, sys_exit_connect)
{
	return connected(args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_enter_close)
{
	u64 id = bpf_get_current_pid_tgid();
	struct conn_key key = {.tgid = id >> 32, .fd = args->fd};
	struct conn_state *st = conns.lookup(&key);
	if (!st) {
		/* otelbpf itself is never in conns; its own connections are kept apart. */
		if (is_self(key.tgid))
			forget_own_conn(key.fd);
		return 0;
	}
	u64 now = bpf_ktime_get_ns();
	if (st->tls_conn) {
		/* The TLS session on this socket ends with it: finish what its plaintext had in flight. */
		struct conn_key tkey = {.tgid = key.tgid, .tls = st->tls_conn};
		struct conn_state *ts = conns.lookup(&tkey);
		if (ts && ts->ev.h.sock_id == st->ev.h.sock_id) {
			on_conn_end(ts, now);
			conns.delete(&tkey);
		}
	}
	on_conn_end(st, now);
	conns.delete(&key);
	return 0;
}
