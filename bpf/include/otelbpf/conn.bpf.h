/* What every protocol's state machine shares: tunables, the connection table and the other maps,
 * the tail-call table, and the helpers that build and send a request record.
 *
 * Not a standalone header: otelbpf/probes.py joins it as text ahead of the protocol headers and the
 * hook files (bcc rewrites its map syntax only in the text it compiles), in the order of
 * probes.BPF_SOURCES.
 */
#include <uapi/linux/ptrace.h>
#include <linux/socket.h>
#include <linux/in.h>
#include <linux/in6.h>

#include "otelbpf/events.h"

#ifndef MAX_CONNECTIONS
#define MAX_CONNECTIONS 65536
#endif
#ifndef MAX_TARGETS
#define MAX_TARGETS 16384
#endif
/* Threads that can be inside a traced read/write at once (blocked readers count). */
#ifndef MAX_THREADS_IN_IO
#define MAX_THREADS_IN_IO 65536
#endif
#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 1024
#endif
/* Wake the consumer once per this many records per CPU; it also polls on a timer, so a quiet
 * trickle is still delivered. Batching wakeups saves an interrupt and a context switch a record. */
#ifndef WAKEUP_EVERY
#define WAKEUP_EVERY 64
#endif
/* 1: read the kernel's TCP facts onto each request and report failed connects (bpf/tcp.bpf.c). */
#ifndef TCP_FACTS
#define TCP_FACTS 1
#endif
#if !defined(OFF_SKC_DADDR) || !defined(OFF_SKC_NUM) || !defined(OFF_TASK_MM) || !defined(OFF_MM_ARG_START) || \
	!defined(OFF_TASK_FILES) || !defined(OFF_SOCKET_SK) || !defined(OFF_TCP_SRTT_US) || \
	!defined(OFF_TCP_TOTAL_RETRANS) || !defined(OFF_SK_ERR) || !defined(OFF_SK_ERR_SOFT) || !defined(OFF_TP_SEND_RESET_SKADDR)
#error "kernel struct offsets (OFF_*) must come from BTF: see otelbpf/kernel_offsets.py"
#endif
#define WINDOW_NS 100000000ULL
/* otelbpf's own connections remembered at once; it opens one or two per exporter. */
#define MAX_OWN_CONNS 1024
#define CAP OTELBPF_CAPTURE_BYTES
#define RESP_CAP OTELBPF_RESP_CAPTURE_BYTES
#define MAX_IOV 8
/* The record up to its data[]: what is always sent. */
#define RECORD_FIXED (sizeof(struct otelbpf_record_header) + 4 * sizeof(__u16))

/* The tail-call table, one slot per program, declared here and nowhere else: otelbpf/probes.py reads
 * this enum and loads the program named after each slot (TAIL_HTTP1 -> http1; tls_http1 for the
 * uprobe side). A protocol's state machine sits at its protocol number, so the dispatcher calls
 * TAIL_PROTOCOL(n). Tail calls only reach programs of their own type, so the syscall hooks and the
 * TLS uprobes each fill a table of this layout: progs and tls_progs. */
enum tail_call {
	TAIL_PROCESS_IO = 0, /* connection lookup and protocol detection, then the protocol's slot */
	TAIL_HTTP1 = OTELBPF_PROTO_HTTP1,
	TAIL_POSTGRES = OTELBPF_PROTO_POSTGRES,
	TAIL_REDIS = OTELBPF_PROTO_REDIS,
	TAIL_MYSQL = OTELBPF_PROTO_MYSQL,
	TAIL_HTTP1_PIPELINE = OTELBPF_PROTO_MAX, /* after a response: start a queued request */
	TAIL_HTTP1_HEAD = OTELBPF_PROTO_MAX + 1, /* the next window of a response head longer than CAP */
	TAIL_MAX = OTELBPF_PROTO_MAX + 8,
};
#define TAIL_PROTOCOL(p) ((p) & (OTELBPF_PROTO_MAX - 1))

enum io_dir { DIR_IN = 1, DIR_OUT = 2 };
/* Where a connection's current request is. ST_SKIP: a request shed by the rate limit; nothing is
 * done until the next request starts. */
enum conn_state_kind { ST_IDLE = 0, ST_REQUEST = 1, ST_RESPONSE = 2, ST_SKIP = 3 };
/* conn_state.proto: an enum otelbpf_protocol once detected, or one of these. */
enum conn_kind {
	CONN_UNDECIDED = 0, /* no bytes seen yet */
	CONN_OTHER = 0xfe, /* bytes of no known protocol: ignored for the connection's life */
	CONN_TLS = 0xff, /* TLS records: the plaintext is followed through tls.bpf.c */
};

struct config {
	u32 self_tgid; /* never trace otelbpf itself: its export traffic would feed back */
	u32 trace_all; /* 1: every process; 0 (the default until configured): only tgids in `targets` */
	/* Requests traced per 100 ms window across all CPUs; 0: no limit. User space lowers it while
	 * the CPUs are saturated, so tracing yields to the traced applications. */
	u64 max_per_window;
	u32 tls_follow; /* enum tls_follow: which process events user space wants on task_events */
	u32 _pad;
};

/* config.tls_follow. Tracing everything, TLS libraries are hooked file-wide and only new programs
 * need checking; tracing chosen processes, they are hooked per process, so user space must hear of
 * each new one (fork), each program it starts (exec) and maps (loader, dlopen), and its end. */
enum tls_follow { FOLLOW_NONE = 0, FOLLOW_EXECS = 1, FOLLOW_ALL = 2 };

/* A syscall in flight on one thread, from sys_enter to sys_exit. */
struct io_args {
	u64 sk; /* set by sock_*_length: the fd is a TCP socket */
	u64 buf; /* plain buffer, or the iovec array when iovcnt > 0 */
	u64 enter_ns;
	u32 fd;
	u32 iovcnt;
	s64 ret; /* the syscall's result, handed to process_io */
	u64 tls; /* TLS session (SSL*, gnutls_session_t) for plaintext from tls.bpf.c; 0 for sockets */
	u8 dir;
	u8 family;
	u8 lib; /* enum otelbpf_tls_library */
	u8 sk_inferred; /* TLS: sk is the thread's last TLS socket, not seen inside the call */
	u8 _pad[4];
};

/* The server request a thread last read bytes of: a client request the thread starts while that
 * request is in flight is made on its behalf (thread per request), or most likely so (event loop). */
struct thread_request {
	u32 fd; /* the server connection, keyed (tgid, fd, tls) */
	u32 _pad;
	u64 tls;
	u64 start_ns;
};

struct conn_state {
	struct otelbpf_request_event ev; /* the record being built, sent straight from map memory */
	u64 last_resp_ns;
	u64 tls_conn; /* on a CONN_TLS socket: the TLS session riding on it, ended with the socket */
	/* Client sockets: the server request the thread was serving when it connected. The first
	 * request on the connection belongs to it even if an event loop read others meanwhile. */
	struct thread_request cause;
	/* The protocol state machine's own fields; each protocol header says what it keeps in them. */
	s64 left;
	u64 tail;
	u32 pending;
	u32 retrans_start; /* the socket's total_retrans when the request in flight started */
	u8 state; /* enum conn_state_kind */
	u8 proto; /* enum otelbpf_protocol or enum conn_kind */
	u8 role;
	u8 addr_known;
	u8 peer_closed;
	u8 tls_guessed; /* TLS session: its socket is the thread's last one, not one seen in a call */
	u8 close_ends; /* the response in flight has no delimiter: the connection's close completes it */
	u8 pflags; /* the protocol state machine's own flags */
};

/* A socket's own bytes are keyed (tgid, fd, 0); TLS plaintext (tgid, 0, session), because a
 * memory-BIO library (node) hands over plaintext before we know which socket it belongs to. */
struct conn_key {
	u32 tgid;
	u32 fd;
	u64 tls;
};

/* A TLS read or write in flight, from its uprobe to its uretprobe (tls.bpf.c). */
struct tls_call {
	u64 conn; /* SSL* or gnutls_session_t */
	u64 buf; /* plaintext buffer */
	u64 len_out; /* SSL_*_ex: where the library stores the byte count; 0 otherwise */
	u64 enter_ns;
	u64 sk; /* socket of a syscall made inside this call (socket BIO), 0 if none */
	u32 fd;
	u8 dir;
	u8 lib; /* enum otelbpf_tls_library */
	u8 _pad[2];
};

/* The TLS socket a thread last read or wrote: where a memory-BIO library's plaintext came from. */
struct tls_sock {
	u64 sk;
	u32 fd;
	u32 _pad;
};

struct scan_state {
	s64 cl; /* Content-Length, -1 when absent */
	u32 cl_pos; /* where the Content-Length value starts, 0 when no such header */
	u32 end; /* offset just past the blank line, 0 when not within the buffer */
	u32 chunked;
	u32 _pad;
};

/* A TCP connection as its server end sees it. Addresses in IPv6 form (IPv4 as ::ffff:a.b.c.d), so
 * a dual-stack server's view of an IPv4 client matches the client's own; ports in host order. */
struct conn_tuple {
	u8 local_addr[16];
	u8 peer_addr[16];
	u16 local_port;
	u16 peer_port;
	u32 _pad;
};

/* Per-CPU working memory, and what the dispatcher hands the protocol's program: tail calls pass
 * no arguments, and this CPU runs the whole chain without being preempted. */
struct scratch {
	char buf[2 * CAP];
	struct scan_state ss;
	struct conn_key key; /* the connection the tail-called program works on */
	struct io_args io; /* the read or write it handles */
	u64 now;
	/* A lookup key for own_conns, built here rather than on the stack: the dispatcher is close to
	 * the verifier's limit, and stack bytes written on one path stop it pruning the others. */
	struct conn_tuple tuple;
	/* A record put together for sending when its request and response bytes are not contiguous. */
	struct otelbpf_request_event out;
};

struct comm_key {
	char comm[16];
};

/* What the TCP stack tells of one socket a traced process uses, by struct sock address: kept from
 * the socket's connect or accept (or adoption) to its destruction, for the tracepoints in
 * bpf/tcp.bpf.c, which see the socket but not the process or fd. */
struct tcp_sock_facts {
	u64 connect_ns; /* when the process called connect(); 0 for a socket it did not open */
	u64 settled_ns; /* when the handshake ended: established, or failed (then reported) */
	struct thread_request cause; /* what the thread was serving when it called connect() */
	u32 tgid;
	u32 tid;
	char comm[OTELBPF_COMM_LEN];
	u8 reset; /* a reset was sent or received */
	u8 failed; /* the handshake failed */
	u8 connect_reported; /* connect_us went out on a request already */
	u8 _pad[5];
};

struct rate_window {
	u64 start_ns;
	u64 used;
};

/* Settings written once by user space before attaching. */
BPF_ARRAY(config_map, struct config, 1);
/* Processes to trace unless config.trace_all is set (tgid -> 1). */
BPF_HASH(targets, u32, u8, MAX_TARGETS);
/* Executable names (comm) whose new processes become targets (--exe). */
BPF_HASH(target_comms, struct comm_key, u8, 64);
/* Syscall arguments saved at sys_enter, by thread id. */
BPF_HASH(active_io, u64, struct io_args, MAX_THREADS_IN_IO);
/* connect()'s fd saved at sys_enter, by thread id. */
BPF_HASH(active_sock_call, u64, u32, 16384);
/* otelbpf's own connections (its OTLP export), keyed as their server end sees them. A collector
 * on this host that is traced must not trace what otelbpf sends it, or every export batch would
 * make a span for the next one. */
BPF_TABLE("lru_hash", struct conn_tuple, u8, own_conns, MAX_OWN_CONNS);
/* The same connections by otelbpf's fd, so its close() forgets them: a later connection that
 * reuses the tuple is traced again. */
BPF_HASH(own_fds, u32, struct conn_tuple, MAX_OWN_CONNS);
/* Per-connection protocol state, by conn_key. LRU: idle connections fall out first. */
BPF_TABLE("lru_hash", struct conn_key, struct conn_state, conns, MAX_CONNECTIONS);
/* Zero-filled template for new connections: the state is too large for the BPF stack. */
BPF_PERCPU_ARRAY(zero_state, struct conn_state, 1);
BPF_PERCPU_ARRAY(scratch_map, struct scratch, 1);
/* Counters, indexed by enum otelbpf_stat. */
BPF_PERCPU_ARRAY(stats, u64, OTELBPF_STAT_MAX);
/* The rate-limit window, shared by all CPUs: one busy worker must get the whole budget. */
BPF_ARRAY(rate_map, struct rate_window, 1);
/* Records written per CPU since the consumer was last woken. */
BPF_PERCPU_ARRAY(wakeup_map, u64, 1);
/* The tail-call tables (enum tail_call): each program is verified once, not once per hook. */
BPF_PROG_ARRAY(progs, TAIL_MAX);
BPF_PROG_ARRAY(tls_progs, TAIL_MAX);
/* The last TLS socket each thread used, by thread id (see struct tls_sock). */
BPF_TABLE("lru_hash", u64, struct tls_sock, thread_tls_sock, MAX_THREADS_IN_IO);
/* Per thread: the server request it last read bytes of (LRU: idle threads fall out first). */
BPF_TABLE("lru_hash", u64, struct thread_request, thread_server, MAX_THREADS_IN_IO);
/* TLS library calls in flight (tls.bpf.c), by thread id. */
BPF_HASH(tls_calls, u64, struct tls_call, MAX_THREADS_IN_IO);
/* Processes seen doing socket I/O inside a TLS call (socket BIO), by tgid: never guessed for. */
BPF_TABLE("lru_hash", u32, u8, tls_socket_bio, MAX_TARGETS);
/* Finished requests for user space. */
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
/* TCP facts of the sockets traced processes use (LRU: a socket whose destruction was missed). */
BPF_TABLE("lru_hash", u64, struct tcp_sock_facts, tcp_socks, MAX_CONNECTIONS);

static __always_inline void count(u32 idx)
{
	u64 *v = stats.lookup(&idx);
	if (v)
		*v += 1;
}

enum selection { UNTRACED = 0, TRACED = 1, SELF = 2 };

static __always_inline int selection(u32 tgid)
{
	u32 zero = 0;
	struct config *cfg = config_map.lookup(&zero);
	if (!cfg)
		return UNTRACED;
	if (tgid == cfg->self_tgid)
		return SELF;
	if (cfg->trace_all)
		return TRACED;
	return targets.lookup(&tgid) ? TRACED : UNTRACED;
}

static __always_inline int traced(u32 tgid)
{
	return selection(tgid) == TRACED;
}

static __always_inline int is_self(u32 tgid)
{
	u32 zero = 0;
	struct config *cfg = config_map.lookup(&zero);
	return cfg && tgid == cfg->self_tgid;
}

static __always_inline struct scratch *get_scratch(void)
{
	u32 zero = 0;
	return scratch_map.lookup(&zero);
}

/* Keep a value opaque to the compiler so it cannot fold a bounds mask away. */
#define barrier_var(v) asm volatile("" : "+r"(v))

/* Jump to a slot of the tail-call table, from a syscall hook's program or from a uprobe's. */
static __always_inline void tail_call_sock(void *ctx, int slot)
{
	if (slot > 0)
		progs.call(ctx, slot);
}

static __always_inline void tail_call_tls(struct pt_regs *ctx, int slot)
{
	if (slot > 0)
		tls_progs.call(ctx, slot);
}

/* Both copies of a tail-called program: `name` for the syscall hooks' table and `tls_name` for the
 * uprobes' table. `step` does the work and returns the next slot, or 0. */
#define TAIL_PROGRAMS(name, step)                                                                     \
	int name(void *ctx)                                                                           \
	{                                                                                             \
		tail_call_sock(ctx, step());                                                          \
		return 0;                                                                             \
	}                                                                                             \
	int tls_##name(struct pt_regs *ctx)                                                           \
	{                                                                                             \
		tail_call_tls(ctx, step());                                                           \
		return 0;                                                                             \
	}

/* ---- the bytes of one read or write ---- */

/* The user address and length of the first segment of this syscall's data. */
static __always_inline int first_segment(struct io_args *io, u64 *addr, u64 *len, u64 ret)
{
	if (!io->iovcnt) {
		*addr = io->buf;
		*len = ret;
		return 0;
	}
	struct iovec iov = {};
	if (bpf_probe_read_user(&iov, sizeof(iov), (void *)io->buf))
		return -1;
	*addr = (u64)iov.iov_base;
	*len = iov.iov_len < ret ? iov.iov_len : ret;
	return 0;
}

/* Copy n user bytes to region[off], for a region of `size` bytes (a power of two). At offset 0 (a
 * request's or response's first bytes, nearly always all of them) one read does it. Appends go in
 * power-of-two pieces, each of a constant size that the verifier can check against the region's
 * end without any slack after it. Returns the bytes copied. */
static __always_inline u32 copy_user_at(char *region, u32 size, u32 off, u64 addr, u32 n)
{
	if (off >= size)
		return 0;
	if (n > size - off)
		n = size - off;
	if (off == 0) {
		/* 64-bit and opaque, so the bound checked is the one passed (clang would reuse the
		 * unchecked 32-bit value otherwise). */
		u64 len = n;
		barrier_var(len);
		if (len > size)
			len = size;
		barrier_var(len);
		if (len && bpf_probe_read_user(region, len, (void *)addr)) {
			count(OTELBPF_STAT_READ_FAULTS);
			return 0;
		}
		return len;
	}
	u32 done = 0;
#pragma unroll
	for (u32 piece = CAP; piece >= 1; piece >>= 1) {
		if (piece > size / 2 || !(n & piece))
			continue;
		u32 at = off + done;
		barrier_var(at);
		if (at > size - piece)
			break;
		if (bpf_probe_read_user(region + at, piece, (void *)(addr + done))) {
			count(OTELBPF_STAT_READ_FAULTS);
			break;
		}
		done += piece;
	}
	return done;
}

/* Shift the last bytes of this syscall's data into st->tail: protocols whose responses end with a
 * known byte pattern (a chunked body's terminator, PostgreSQL's ReadyForQuery) look for it there. */
static __always_inline void update_tail(struct conn_state *st, struct io_args *io, u64 ret)
{
	u64 addr = io->buf, seg = ret;
	if (io->iovcnt) {
		/* Find the iovec holding the last transferred byte. */
		u64 left = ret;
		seg = 0;
		for (int i = 0; i < MAX_IOV; i++) {
			if (i >= io->iovcnt || left == 0)
				break;
			struct iovec iov = {};
			if (bpf_probe_read_user(&iov, sizeof(iov), (void *)(io->buf + i * sizeof(iov))))
				return;
			u64 n = iov.iov_len < left ? iov.iov_len : left;
			left -= n;
			addr = (u64)iov.iov_base;
			seg = n;
		}
		if (left)
			return; /* more iovecs than we walk: leave the tail alone */
	}
	u8 n = seg >= 8 ? 8 : seg;
	if (n == 0)
		return;
	u64 bytes = 0;
	if (bpf_probe_read_user(&bytes, n & 15, (void *)(addr + seg - n)))
		return;
	/* bytes holds the last n bytes, first byte lowest; keep the stream's last byte lowest-first
	 * by shifting the previous tail down. */
	if (n == 8)
		st->tail = bytes;
	else
		st->tail = (st->tail >> (8 * n)) | (bytes << (8 * (8 - n)));
}

/* ---- addresses ---- */

static __always_inline void read_sock_addr(struct otelbpf_conn_addr *a, u64 sk)
{
	u16 family = 0, dport = 0, num = 0;
	bpf_probe_read_kernel(&family, sizeof(family), (void *)(sk + OFF_SKC_FAMILY));
	bpf_probe_read_kernel(&dport, sizeof(dport), (void *)(sk + OFF_SKC_DPORT));
	bpf_probe_read_kernel(&num, sizeof(num), (void *)(sk + OFF_SKC_NUM));
	if (family == AF_INET) {
		bpf_probe_read_kernel(a->local_addr, 4, (void *)(sk + OFF_SKC_RCV_SADDR));
		bpf_probe_read_kernel(a->peer_addr, 4, (void *)(sk + OFF_SKC_DADDR));
	} else if (family == AF_INET6) {
		bpf_probe_read_kernel(a->local_addr, 16, (void *)(sk + OFF_SKC_V6_RCV_SADDR));
		bpf_probe_read_kernel(a->peer_addr, 16, (void *)(sk + OFF_SKC_V6_DADDR));
	}
	a->family = family;
	a->local_port = num;
	a->peer_port = ntohs(dport);
}

static __always_inline void ipv6_form(u8 *dst, const u8 *src, u16 family)
{
	if (family == AF_INET6) {
		__builtin_memcpy(dst, src, 16);
	} else {
		__builtin_memset(dst, 0, 10);
		dst[10] = 0xff;
		dst[11] = 0xff;
		__builtin_memcpy(dst + 12, src, 4);
	}
}

/* The tuple of a connection as seen from its server end: from a server's own addresses, or
 * (mirror) from its client's. */
static __always_inline void server_view(struct conn_tuple *t, struct otelbpf_conn_addr *a, int mirror)
{
	ipv6_form(t->local_addr, mirror ? a->peer_addr : a->local_addr, a->family);
	ipv6_form(t->peer_addr, mirror ? a->local_addr : a->peer_addr, a->family);
	t->local_port = mirror ? a->peer_port : a->local_port;
	t->peer_port = mirror ? a->local_port : a->peer_port;
	t->_pad = 0;
}

/* The struct sock behind one of the current process's fds (0 if none): task->files->fdt->fd[fd]
 * ->private_data (the struct socket of a socket fd)->sk, at offsets from the running kernel's BTF. */
static __always_inline u64 fd_sock(u32 fd)
{
	u64 task = (u64)bpf_get_current_task();
	u64 files = 0, fdt = 0, fds = 0, file = 0, sock = 0, sk = 0;
	u32 max_fds = 0;
	if (bpf_probe_read_kernel(&files, sizeof(files), (void *)(task + OFF_TASK_FILES)) || !files)
		return 0;
	if (bpf_probe_read_kernel(&fdt, sizeof(fdt), (void *)(files + OFF_FILES_FDT)) || !fdt)
		return 0;
	if (bpf_probe_read_kernel(&max_fds, sizeof(max_fds), (void *)(fdt + OFF_FDT_MAX_FDS)) || fd >= max_fds)
		return 0;
	if (bpf_probe_read_kernel(&fds, sizeof(fds), (void *)(fdt + OFF_FDT_FD)) || !fds)
		return 0;
	if (bpf_probe_read_kernel(&file, sizeof(file), (void *)(fds + (u64)fd * sizeof(u64))) || !file)
		return 0;
	if (bpf_probe_read_kernel(&sock, sizeof(sock), (void *)(file + OFF_FILE_PRIVATE_DATA)) || !sock)
		return 0;
	if (bpf_probe_read_kernel(&sk, sizeof(sk), (void *)(sock + OFF_SOCKET_SK)))
		return 0;
	return sk;
}

/* The TCP socket behind fd, or 0 when fd is not one (UDP, Unix, a pipe): only TCP gets state. */
static __always_inline u64 fd_tcp_sock(u32 fd)
{
	u64 sk = fd_sock(fd);
	u16 protocol = 0, family = 0;
	if (!sk || bpf_probe_read_kernel(&protocol, sizeof(protocol), (void *)(sk + OFF_SK_PROTOCOL)) ||
	    protocol != IPPROTO_TCP)
		return 0;
	if (bpf_probe_read_kernel(&family, sizeof(family), (void *)(sk + OFF_SKC_FAMILY)) ||
	    (family != AF_INET && family != AF_INET6))
		return 0;
	return sk;
}

/* otelbpf's connect() on fd returned: remember the connection before otelbpf can send a byte on
 * it, so that no server reads its data first. Only otelbpf's own connects come here. */
static __always_inline void remember_own_conn(u32 fd)
{
	u64 sk = fd_tcp_sock(fd);
	if (!sk)
		return;
	struct otelbpf_conn_addr a = {};
	read_sock_addr(&a, sk);
	struct conn_tuple t = {};
	server_view(&t, &a, 1);
	struct conn_tuple *old = own_fds.lookup(&fd);
	if (old)
		own_conns.delete(old); /* the fd's last connection, its close unseen */
	own_fds.update(&fd, &t);
	u8 one = 1;
	own_conns.update(&t, &one);
}

static __always_inline void forget_own_conn(u32 fd)
{
	struct conn_tuple *t = own_fds.lookup(&fd);
	if (!t)
		return;
	own_conns.delete(t);
	own_fds.delete(&fd);
}

static __always_inline int is_own_conn(struct otelbpf_conn_addr *a)
{
	struct scratch *s = get_scratch();
	if (!s)
		return 0;
	server_view(&s->tuple, a, 0);
	return own_conns.lookup(&s->tuple) != NULL;
}

/* ---- TCP facts ---- */

static __always_inline u32 tcp_total_retrans(u64 sk)
{
	u32 n = 0;
	if (TCP_FACTS && sk)
		bpf_probe_read_kernel(&n, sizeof(n), (void *)(sk + OFF_TCP_TOTAL_RETRANS));
	return n;
}

/* Keep TCP facts for a socket a traced process reads or writes; a socket already known keeps its. */
static __always_inline void tcp_track(u64 sk)
{
	if (!TCP_FACTS || !sk)
		return;
	struct tcp_sock_facts f = {};
	tcp_socks.insert(&sk, &f);
}

/* Put the socket's TCP facts on the record about to go out. Read from the socket itself rather than
 * counted per packet: total_retrans is the kernel's own count, and srtt_us its own estimate, so
 * nothing runs per segment. Only sockets in tcp_socks are read: they are alive until
 * tcp_destroy_sock removes them. */
static __always_inline void tcp_facts_at_end(struct conn_state *st)
{
	st->ev.h.retransmits = 0;
	st->ev.h.srtt_us = 0;
	st->ev.h.connect_us = 0;
	st->ev.h.tcp_flags = 0;
	u64 sk = st->ev.h.sock_id;
	if (!TCP_FACTS || !sk)
		return;
	struct tcp_sock_facts *f = tcp_socks.lookup(&sk);
	if (!f)
		return;
	u32 srtt = 0;
	bpf_probe_read_kernel(&srtt, sizeof(srtt), (void *)(sk + OFF_TCP_SRTT_US));
	st->ev.h.retransmits = tcp_total_retrans(sk) - st->retrans_start;
	st->ev.h.srtt_us = srtt >> 3; /* the kernel keeps it scaled by 8 */
	u8 flags = OTELBPF_TCP_KNOWN;
	if (f->reset)
		flags |= OTELBPF_TCP_RESET;
	if (f->connect_ns && f->settled_ns > f->connect_ns && !f->failed && !f->connect_reported &&
	    st->role == OTELBPF_ROLE_CLIENT) {
		st->ev.h.connect_us = (f->settled_ns - f->connect_ns) / 1000;
		flags |= OTELBPF_TCP_CONNECT;
		f->connect_reported = 1;
	}
	st->ev.h.tcp_flags = flags;
}

/* ---- requests and records ---- */

/* Decide at a request's start whether it is traced, so a shed request costs no parsing at all. */
static __always_inline int sample_request(u64 now)
{
	u32 zero = 0;
	struct config *cfg = config_map.lookup(&zero);
	if (!cfg || cfg->max_per_window == 0)
		return 1;
	u64 limit = cfg->max_per_window;
	struct rate_window *w = rate_map.lookup(&zero);
	if (!w)
		return 1;
	/* Two CPUs may both reset an expired window; admitting a few extra requests is harmless. */
	if (now - w->start_ns > WINDOW_NS) {
		w->start_ns = now;
		w->used = 0;
	}
	if (w->used >= limit)
		return 0;
	__sync_fetch_and_add(&w->used, 1);
	return 1;
}

/* Send the record: only as many data bytes as it holds. Request bytes sit at data[0] and response
 * bytes at data[CAP]; when both are there and the request is shorter than CAP, the two are joined
 * in per-CPU scratch first, so the record still carries no gap. */
static __always_inline void emit(struct conn_state *st, u64 now)
{
	tcp_facts_at_end(st);
	st->ev.h.type = OTELBPF_EVENT_REQUEST;
	st->ev.h.protocol = st->proto;
	bpf_get_current_comm(st->ev.h.comm, sizeof(st->ev.h.comm));
	u32 zero = 0;
	u64 *since = wakeup_map.lookup(&zero);
	if (!since)
		return;
	u64 flags = BPF_RB_NO_WAKEUP;
	if (++*since >= WAKEUP_EVERY) {
		*since = 0;
		flags = BPF_RB_FORCE_WAKEUP;
	}
	void *rec = &st->ev;
	u32 req_len = st->ev.p.req_len;
	u32 resp_len = st->ev.p.resp_len;
	if (req_len > CAP)
		req_len = CAP;
	if (resp_len > RESP_CAP)
		resp_len = RESP_CAP;
	u64 size = RECORD_FIXED + req_len;
	if (resp_len) {
		size = RECORD_FIXED + CAP + resp_len;
		if (req_len < CAP) {
			struct scratch *s = get_scratch();
			if (!s)
				return;
			bpf_probe_read_kernel(&s->out, RECORD_FIXED + CAP, &st->ev);
			bpf_probe_read_kernel(&s->out.p.data[req_len & (CAP - 1)], resp_len, &st->ev.p.data[CAP]);
			rec = &s->out;
			size = RECORD_FIXED + req_len + resp_len;
		}
	}
	if (size > sizeof(st->ev))
		return;
	if (events.ringbuf_output(rec, size, flags)) {
		/* Reserving can fail without the ring being full (its lock gives up under contention on
		 * newer kernels); one retry turns most of those into delivered records. */
		count(OTELBPF_STAT_RINGBUF_RETRIED);
		if (events.ringbuf_output(rec, size, flags)) {
			count(OTELBPF_STAT_LOST_RINGBUF_FULL);
			return;
		}
	}
	count(OTELBPF_STAT_EVENTS);
}

/* Append this syscall's first segment to the request capture while there is room. */
static __always_inline void capture_request(struct conn_state *st, u64 addr, u64 len)
{
	u32 off = st->ev.p.req_len;
	if (off >= CAP || len > CAP - off)
		st->ev.h.flags |= OTELBPF_FLAG_REQ_TRUNCATED;
	if (off >= CAP)
		return;
	u32 n = len > CAP ? CAP : len;
	st->ev.p.req_len = off + copy_user_at(st->ev.p.data, CAP, off, addr, n);
}

/* Append this syscall's first segment to the response capture while there is room. */
static __always_inline void capture_response(struct conn_state *st, u64 addr, u64 len)
{
	u32 off = st->ev.p.resp_len;
	if (off >= RESP_CAP || len > RESP_CAP - off)
		st->ev.h.flags |= OTELBPF_FLAG_RESP_TRUNCATED;
	if (off >= RESP_CAP)
		return;
	u32 n = len > RESP_CAP ? RESP_CAP : len;
	st->ev.p.resp_len = off + copy_user_at(st->ev.p.data + CAP, RESP_CAP, off, addr, n);
}

/* A request starts: count it and decide whether it is traced; reset the record. Returns 0 when the
 * rate limit sheds it (the connection then waits for the next request). */
static __always_inline int start_request(struct conn_state *st, u64 now, u8 flags)
{
	count(OTELBPF_STAT_REQUESTS);
	if (!sample_request(now)) {
		count(OTELBPF_STAT_SAMPLED_OUT);
		st->state = ST_SKIP;
		/* Never emitted; kept so that client requests made on its behalf are shed with it. */
		st->ev.h.start_ns = now;
		return 0;
	}
	st->state = ST_REQUEST;
	st->close_ends = 0;
	st->retrans_start = tcp_total_retrans(st->ev.h.sock_id);
	st->ev.h.flags = flags;
	st->ev.h.end = OTELBPF_END_COMPLETE;
	st->ev.h.status = 0;
	st->ev.h.bytes_in = 0;
	st->ev.h.bytes_out = 0;
	st->ev.p.resp_len = 0;
	st->ev.p.count = 0;
	return 1;
}

static __always_inline void add_bytes(struct conn_state *st, u8 dir, u64 ret)
{
	if (dir == DIR_IN)
		st->ev.h.bytes_in += ret;
	else
		st->ev.h.bytes_out += ret;
}

/* End of a connection (close, or EOF seen by a reader): finish what is in flight. */
static __always_inline void on_conn_end(struct conn_state *st, u64 now)
{
	if (st->proto == CONN_UNDECIDED || st->proto >= OTELBPF_PROTO_MAX)
		return;
	if (st->state == ST_REQUEST) {
		st->ev.h.end = OTELBPF_END_NO_RESPONSE;
		st->ev.h.end_ns = now;
		emit(st, now);
	} else if (st->state == ST_RESPONSE) {
		st->ev.h.end = st->close_ends ? OTELBPF_END_CLOSE_DELIMITED : OTELBPF_END_CONN_CLOSED;
		emit(st, now);
	}
	st->state = ST_IDLE;
}

static __always_inline struct conn_state *new_conn(struct conn_key *key, u8 role, u8 proto, u64 sk)
{
	u32 zero = 0;
	struct conn_state *tmpl = zero_state.lookup(&zero);
	if (!tmpl)
		return NULL;
	if (conns.update(key, tmpl))
		return NULL;
	struct conn_state *st = conns.lookup(key);
	if (!st)
		return NULL;
	st->role = role;
	st->proto = proto;
	st->ev.h.role = role;
	st->ev.h.pid = key->tgid;
	st->ev.h.sock_id = sk;
	return st;
}

/* ---- which server request a client request serves ---- */

/* Server request bytes were read on this thread: it is now what the thread serves. */
static __always_inline void note_serving(u64 id, struct conn_key *key, u64 start_ns)
{
	struct thread_request tr = {.fd = key->fd, .tls = key->tls, .start_ns = start_ns};
	thread_server.update(&id, &tr);
}

/* Is the server request in tr still in flight? 1 yes (*cause = its start), 0 no or unknown, -1 it
 * was shed by the rate limit (then its client requests are shed too, so no trace loses its root). */
static __always_inline int find_cause(struct thread_request *tr, u32 tgid, u64 *cause)
{
	if (!tr->start_ns)
		return 0;
	struct conn_key k = {.tgid = tgid, .fd = tr->fd, .tls = tr->tls};
	struct conn_state *srv = conns.lookup(&k);
	if (!srv || srv->role != OTELBPF_ROLE_SERVER || srv->ev.h.start_ns != tr->start_ns)
		return 0;
	if (srv->state == ST_SKIP)
		return -1;
	if (srv->state != ST_REQUEST && srv->state != ST_RESPONSE)
		return 0;
	*cause = tr->start_ns;
	return 1;
}

/* A client request began: record which server request of this process it serves. The connection's
 * own cause (the request being served when it was opened) wins for its first request, because an
 * event loop may read other requests while a connect or TLS handshake completes. */
static __always_inline void client_started(struct conn_state *st, struct conn_key *key, struct io_args *io, u64 id)
{
	u32 tgid = id >> 32;
	struct thread_request tr = st->cause;
	if (!tr.start_ns && key->tls && io->fd) {
		/* TLS plaintext: the connect was seen on the socket under the session. */
		struct conn_key sk = {.tgid = tgid, .fd = io->fd};
		struct conn_state *sock = conns.lookup(&sk);
		if (sock && sock->ev.h.sock_id == io->sk) {
			tr = sock->cause;
			sock->cause.start_ns = 0;
		}
	}
	st->cause.start_ns = 0;
	u64 cause = 0;
	int found = find_cause(&tr, tgid, &cause);
	if (found == 0) {
		struct thread_request *cur = thread_server.lookup(&id);
		if (cur) {
			tr = *cur;
			found = find_cause(&tr, tgid, &cause);
		}
	}
	if (found < 0) {
		st->state = ST_SKIP;
		count(OTELBPF_STAT_SAMPLED_OUT);
		return;
	}
	st->ev.h.cause_ns = cause;
}

/* After a protocol's state machine handled request bytes: keep the thread/cause bookkeeping that
 * links client calls to the server request they serve. `started` is set when this syscall began
 * a new request. */
static __always_inline void track_cause(struct conn_state *st, struct conn_key *key, struct io_args *io, u64 id,
					int started)
{
	if (st->role == OTELBPF_ROLE_SERVER) {
		if (st->state == ST_REQUEST || st->state == ST_SKIP)
			note_serving(id, key, st->ev.h.start_ns);
	} else if (started && st->state == ST_REQUEST && st->ev.h.start_ns == io->enter_ns) {
		client_started(st, key, io, id);
	}
}

/* Move this thread's saved read or write out of active_io; 0 when there is none. */
static __always_inline int take_io(u64 id, struct io_args *io)
{
	struct io_args *saved = active_io.lookup(&id);
	if (!saved)
		return 0;
	*io = *saved;
	active_io.delete(&id);
	return 1;
}
