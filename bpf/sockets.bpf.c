/* HTTP/1.x over TCP sockets, from syscall and socket tracepoints only (no kprobes).
 *
 * Per syscall: sys_enter_* saves the user buffer (the return probe no longer has the arguments),
 * sock:sock_{recv,send}_length tells us the fd is a TCP socket and gives its struct sock, and
 * sys_exit_* feeds the transferred bytes to a per-connection state machine. Request and response
 * are paired here; one record per finished request crosses the ring buffer. TLS plaintext from
 * tls.bpf.c runs through the same state machine (conn_data), keyed by the TLS session instead of
 * the fd; this file tells it which socket a session rides on.
 *
 * Tunables come in as -D flags (see otelbpf/probes.py); kernel struct offsets (OFF_SKC_*) come
 * from the running kernel's BTF because the installed headers may belong to another kernel.
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
#if !defined(OFF_SKC_DADDR) || !defined(OFF_SKC_NUM) || !defined(OFF_TASK_MM) || !defined(OFF_MM_ARG_START) || \
	!defined(OFF_TASK_FILES) || !defined(OFF_SOCKET_SK)
#error "kernel struct offsets (OFF_*) must come from BTF: see otelbpf/kernel_offsets.py"
#endif
#define WINDOW_NS 100000000ULL
/* otelbpf's own connections remembered at once; it opens one or two per exporter. */
#define MAX_OWN_CONNS 1024
#define CAP OTELBPF_CAPTURE_BYTES
#define MAX_IOV 8

enum io_dir { DIR_IN = 1, DIR_OUT = 2 };
/* ST_SKIP: a request shed by the rate limit; nothing is done until the next request starts. */
enum conn_state_kind { ST_IDLE = 0, ST_REQUEST = 1, ST_RESPONSE = 2, ST_SKIP = 3 };
/* PROTO_TLS: the socket carries TLS records; its plaintext is followed through tls.bpf.c. */
enum proto { PROTO_UNKNOWN = 0, PROTO_HTTP = 1, PROTO_OTHER = 2, PROTO_TLS = 3 };

struct config {
	u32 self_tgid; /* never trace otelbpf itself: its export traffic would feed back */
	u32 trace_all; /* 1: every process; 0 (the default until configured): only tgids in `targets` */
	/* Requests traced per 100 ms window across all CPUs; 0: no limit. User space lowers it while
	 * the CPUs are saturated, so tracing yields to the traced applications. */
	u64 max_per_window;
};

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
	struct otelbpf_http_event ev; /* the record being built, emitted straight from map memory */
	char overflow[CAP]; /* lets a capture append be bounded by CAP alone */
	u64 last_resp_ns;
	s64 body_left; /* response body bytes still expected; -1 when not length-delimited */
	u64 tail; /* last bytes of the response stream, to spot the end of a chunked body */
	u8 state;
	u8 proto;
	u8 role;
	u8 chunked;
	u8 addr_known;
	u8 head_req; /* request method was HEAD: the response has no body whatever it says */
	u8 peer_closed;
	u8 check_pipeline; /* a response completed: look for a queued request (tail call 1) */
	u64 tls_conn; /* on a PROTO_TLS socket: the TLS session riding on it, ended with the socket */
	u8 tls_guessed; /* TLS session: its socket is the thread's last one, not one seen in a call */
	/* Client sockets: the server request the thread was serving when it connected. The first
	 * request on the connection belongs to it even if an event loop read others meanwhile. */
	struct thread_request cause;
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

struct scratch {
	char buf[2 * CAP];
	struct scan_state ss;
	struct conn_key key; /* the connection check_pipeline should look at */
	/* A lookup key for own_conns, built here rather than on the stack: process_io is close to
	 * the verifier's limit, and stack bytes written on one path stop it pruning the others. */
	struct conn_tuple tuple;
};

struct comm_key {
	char comm[16];
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
/* Per-connection HTTP state, by conn_key. LRU: idle connections fall out first. */
BPF_TABLE("lru_hash", struct conn_key, struct conn_state, conns, MAX_CONNECTIONS);
/* Zero-filled template for new connections: the state is too large for the BPF stack. */
BPF_PERCPU_ARRAY(zero_state, struct conn_state, 1);
/* Room to copy response headers into before scanning them. */
BPF_PERCPU_ARRAY(scratch_map, struct scratch, 1);
/* Counters, indexed by enum otelbpf_stat. */
BPF_PERCPU_ARRAY(stats, u64, OTELBPF_STAT_MAX);
/* The rate-limit window, shared by all CPUs: one busy worker must get the whole budget. */
BPF_ARRAY(rate_map, struct rate_window, 1);
/* Records written per CPU since the consumer was last woken. */
BPF_PERCPU_ARRAY(wakeup_map, u64, 1);
/* 0: process_io, 1: check_pipeline. Reached by tail call so each is verified once, not per
 * syscall tracepoint. */
BPF_PROG_ARRAY(progs, 2);
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

/* ---- process selection ---- */

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

TRACEPOINT_PROBE(sched, sched_process_exit)
{
	/* Threads enter the table through the fork hook too; drop each id as its task ends. */
	u32 pid = args->pid;
	targets.delete(&pid);
	/* A thread that dies inside a call never reaches the return probe or sys_exit: without this,
	 * its entries would hold a slot in the per-thread tables for the rest of the run. */
	u64 id = bpf_get_current_pid_tgid();
	active_io.delete(&id);
	active_sock_call.delete(&id);
	tls_calls.delete(&id);
	thread_tls_sock.delete(&id);
	thread_server.delete(&id);
	return 0;
}

/* ---- helpers ---- */

static __always_inline int is_method_start(const char *p)
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


/* Keep a value opaque to the compiler so it cannot fold the bounds mask away. */
#define barrier_var(v) asm volatile("" : "+r"(v))

/* "content-" and "length:" (7 bytes), "transfer" and "-encodin", as little-endian words. */
#define W_CONTENT_ 0x2d746e65746e6f63ULL
#define W_LENGTH_ 0x003a6874676e656cULL
#define W_TRANSFER 0x726566736e617274ULL
#define W__ENCODIN 0x6e69646f636e652dULL
#define LOWER_8 0x2020202020202020ULL
#define LOW_7 0x00ffffffffffffffULL

/* One pass over the header block at the start of s->buf: where it ends, Content-Length,
 * Transfer-Encoding. The byte loop only looks for line ends; at a line start two 8-byte words
 * are compared with the two header names that matter (lower-cased with | 0x20). Results go to
 * map memory (volatile), so every iteration ends in the same verifier state. */
static __always_inline void scan_head(struct scratch *s, u32 len)
{
	volatile struct scan_state *ss = &s->ss;
	/* Hide len's range from clang: knowing len < CAP it would drop the constant bound, and the
	 * verifier needs that bound to see the loop end. */
	barrier_var(len);
	ss->cl = -1;
	ss->end = 0;
	ss->chunked = 0;
	ss->cl_pos = 0;
	for (u32 i = 0; i < CAP; i++) {
		if (i >= len)
			break;
		u32 idx = i;
		barrier_var(idx);
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

/* Shift the last bytes of this syscall's data into st->tail (for the chunked terminator). */
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

/* "0\r\n\r\n" as the last five bytes of the stream, read little-endian from the top of tail. */
static __always_inline int tail_ends_chunked(u64 tail)
{
	return (tail >> 24) == 0x0a0d0a0d30ULL;
}

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

static __always_inline void read_addresses(struct conn_state *st, u64 sk)
{
	read_sock_addr(&st->ev.conn, sk);
	st->addr_known = 1;
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

/* otelbpf's connect() on fd returned: remember the connection before otelbpf can send a byte on
 * it, so that no server reads its data first. Only otelbpf's own connects come here. */
static __always_inline void remember_own_conn(u32 fd)
{
	u64 sk = fd_sock(fd);
	u16 protocol = 0;
	if (!sk || bpf_probe_read_kernel(&protocol, sizeof(protocol), (void *)(sk + OFF_SK_PROTOCOL)) ||
	    protocol != IPPROTO_TCP)
		return;
	struct otelbpf_conn_addr a = {};
	read_sock_addr(&a, sk);
	if (a.family != AF_INET && a.family != AF_INET6)
		return;
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
	u32 zero = 0;
	struct scratch *s = scratch_map.lookup(&zero);
	if (!s)
		return 0;
	server_view(&s->tuple, a, 0);
	return own_conns.lookup(&s->tuple) != NULL;
}

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

static __always_inline void emit(struct conn_state *st, u64 now)
{
	st->ev.type = OTELBPF_EVENT_HTTP;
	bpf_get_current_comm(st->ev.comm, sizeof(st->ev.comm));
	u32 zero = 0;
	u64 *since = wakeup_map.lookup(&zero);
	if (!since)
		return;
	u64 flags = BPF_RB_NO_WAKEUP;
	if (++*since >= WAKEUP_EVERY) {
		*since = 0;
		flags = BPF_RB_FORCE_WAKEUP;
	}
	if (events.ringbuf_output(&st->ev, sizeof(st->ev), flags)) {
		/* Reserving can fail without the ring being full (its lock gives up under contention on
		 * newer kernels); one retry turns most of those into delivered records. */
		count(OTELBPF_STAT_RINGBUF_RETRIED);
		if (events.ringbuf_output(&st->ev, sizeof(st->ev), flags)) {
			count(OTELBPF_STAT_LOST_RINGBUF_FULL);
			return;
		}
	}
	count(OTELBPF_STAT_EVENTS);
}

/* Append this syscall's first segment to the request capture while there is room. */
static __always_inline void capture_append(struct conn_state *st, u64 addr, u64 len)
{
	u32 off = st->ev.req_len;
	if (off >= CAP) {
		st->ev.flags |= OTELBPF_HTTP_REQ_TRUNCATED;
		return;
	}
	u32 n = len > CAP ? CAP : len;
	if (n > CAP - off) {
		n = CAP - off;
		st->ev.flags |= OTELBPF_HTTP_REQ_TRUNCATED;
	}
	if (n == 0)
		return;
	if (bpf_probe_read_user(&st->ev.req[off & (CAP - 1)], n & (2 * CAP - 1), (void *)addr)) {
		count(OTELBPF_STAT_READ_FAULTS);
		return;
	}
	st->ev.req_len = off + n;
}

/* A request starts: count it, decide whether it is traced, and reset the per-request fields.
 * Returns 0 when the rate limit sheds it (the connection then waits for the next request). */
static __always_inline int start_request(struct conn_state *st, u64 now, int method, u8 flags)
{
	count(OTELBPF_STAT_REQUESTS);
	if (!sample_request(now)) {
		count(OTELBPF_STAT_SAMPLED_OUT);
		st->state = ST_SKIP;
		/* Never emitted; kept so that client requests made on its behalf are shed with it. */
		st->ev.start_ns = now;
		return 0;
	}
	st->state = ST_REQUEST;
	st->head_req = method == 2;
	st->ev.flags = flags;
	st->ev.status = 0;
	st->ev.bytes_in = 0;
	st->ev.bytes_out = 0;
	st->body_left = -1;
	st->chunked = 0;
	st->tail = 0;
	return 1;
}

static __always_inline void begin_request(struct conn_state *st, struct io_args *io, u64 addr,
					  u64 len, u64 ret, u64 now, u32 tid, int method)
{
	if (!start_request(st, now, method, 0))
		return;
	st->ev.req_offset = 0;
	st->ev.req_len = 0;
	st->ev.tid = tid;
	/* A server's request begins when its bytes arrive; a client's when it starts sending. */
	st->ev.start_ns = st->role == OTELBPF_ROLE_SERVER ? now : io->enter_ns;
	st->ev.end_ns = now;
	capture_append(st, addr, len);
}

/* After a response completes: look for the next request already captured (pipelining). */
static __always_inline void after_response(struct conn_state *st, u64 now)
{
	st->state = ST_IDLE;
	u32 len = st->ev.req_len;
	u32 start = st->ev.req_offset;
	if (start >= len || start >= CAP)
		return;
	u32 zero = 0;
	struct scratch *s = scratch_map.lookup(&zero);
	if (!s)
		return;
	/* req[] is followed by CAP bytes of overflow, so CAP bytes from any start < CAP are in bounds. */
	bpf_probe_read_kernel(s->buf, CAP, &st->ev.req[start & (CAP - 1)]);
	scan_head(s, len - start);
	u32 end = s->ss.end;
	s64 cl = s->ss.cl;
	if (!end)
		return;
	u64 next = start + end + (cl > 0 ? cl : 0);
	if (next + 8 > len || next >= CAP)
		return;
	char peek[8] = {};
	bpf_probe_read_kernel(peek, sizeof(peek), &st->ev.req[next & (CAP - 1)]);
	int m = is_method_start(peek);
	if (!m || !start_request(st, now, m, OTELBPF_HTTP_PIPELINED))
		return;
	st->ev.req_offset = next;
	/* The request was read with its predecessor; it starts when its turn to be served comes. */
	st->ev.start_ns = now;
}

static __always_inline void finish(struct conn_state *st, u64 now)
{
	emit(st, now);
	st->state = ST_IDLE;
	/* Only worth a look when more bytes were captured than this request's own. */
	if (st->ev.req_len > st->ev.req_offset + 16)
		st->check_pipeline = 1;
}

static __always_inline void add_bytes(struct conn_state *st, u8 dir, u64 ret)
{
	if (dir == DIR_IN)
		st->ev.bytes_in += ret;
	else
		st->ev.bytes_out += ret;
}

/* Response bytes (written by a server, read by a client). */
static __always_inline void on_response_data(struct conn_state *st, struct io_args *io, u64 addr,
					     u64 seglen, u64 ret, u64 now)
{
	if (st->state == ST_REQUEST) {
		if (!addr)
			return; /* sendfile: file bytes, never a status line */
		u32 zero = 0;
		struct scratch *s = scratch_map.lookup(&zero);
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
		st->ev.status = status;
		st->state = ST_RESPONSE;
		st->ev.end_ns = now;
		if (status == 101) {
			/* Protocol switch (WebSocket): the connection stops being HTTP/1.x. */
			st->proto = PROTO_OTHER;
			emit(st, now);
			st->state = ST_IDLE;
			return;
		}
		scan_head(s, n);
		u32 end = s->ss.end;
		s64 cl = s->ss.cl;
		if (st->head_req || status == 204 || status == 304) {
			st->body_left = 0;
		} else if (s->ss.chunked) {
			st->chunked = 1;
		} else if (cl >= 0 && end) {
			st->body_left = cl - (s64)(ret - end);
		} else {
			st->body_left = -1;
		}
		if (st->chunked)
			update_tail(st, io, ret);
		if ((st->body_left >= 0 && st->body_left <= 0 && !st->chunked) ||
		    (st->chunked && tail_ends_chunked(st->tail)))
			finish(st, now);
		return;
	}
	if (st->state == ST_RESPONSE) {
		add_bytes(st, io->dir, ret);
		st->ev.end_ns = now;
		if (st->chunked) {
			if (io->buf)
				update_tail(st, io, ret);
			if (tail_ends_chunked(st->tail))
				finish(st, now);
		} else if (st->body_left >= 0) {
			st->body_left -= ret;
			if (st->body_left <= 0)
				finish(st, now);
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

/* Request bytes (read by a server, written by a client). */
static __always_inline void on_request_data(struct conn_state *st, struct io_args *io, u64 addr,
					    u64 seglen, u64 ret, u64 now, u32 tid, int method)
{
	if (method) {
		if (st->state == ST_REQUEST) {
			/* Another request before the response: pipelined; keep its bytes for later. */
			add_bytes(st, io->dir, ret);
			capture_append(st, addr, seglen);
			return;
		}
		if (st->state == ST_RESPONSE) {
			/* The previous response had no delimiter we could follow: it ended here. */
			st->ev.flags |= OTELBPF_HTTP_END_INFERRED;
			st->ev.end_ns = st->last_resp_ns ? st->last_resp_ns : st->ev.end_ns;
			emit(st, now);
		}
		begin_request(st, io, addr, seglen, ret, now, tid, method);
		add_bytes(st, io->dir, ret);
		return;
	}
	if (st->state == ST_REQUEST) {
		/* The rest of the request: headers read in pieces, or a body. */
		add_bytes(st, io->dir, ret);
		capture_append(st, addr, seglen);
	}
}

/* End of a connection (close, or EOF seen by a reader): finish what is in flight. */
static __always_inline void on_conn_end(struct conn_state *st, u64 now)
{
	if (st->proto != PROTO_HTTP)
		return;
	if (st->state == ST_REQUEST) {
		st->ev.flags |= OTELBPF_HTTP_CONN_CLOSED | OTELBPF_HTTP_NO_RESPONSE;
		st->ev.end_ns = now;
		emit(st, now);
	} else if (st->state == ST_RESPONSE) {
		if (st->body_left < 0 && !st->chunked)
			st->ev.flags |= OTELBPF_HTTP_CLOSE_DELIMITED; /* HTTP/1.0 style: ends with the close */
		else
			st->ev.flags |= OTELBPF_HTTP_CONN_CLOSED;
		emit(st, now);
	}
	st->state = ST_IDLE;
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

static __always_inline struct conn_state *new_conn(struct conn_key *key, u8 role, u8 proto)
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
	st->ev.role = role;
	st->ev.pid = key->tgid;
	st->body_left = -1;
	return st;
}

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
	if (!srv || srv->role != OTELBPF_ROLE_SERVER || srv->ev.start_ns != tr->start_ns)
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
		if (sock && sock->ev.sock_id == io->sk) {
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
	st->ev.cause_ns = cause;
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
	progs.call(ctx, 0);
	/* Only reached if the tail call failed. */
	active_io.delete(&id);
	return 0;
}

/* A TLS record header: handshake (22) on a fresh connection, or application data (23) on one
 * that was open before otelbpf started; version 3.x. */
static __always_inline int is_tls_start(const char *p)
{
	return (p[0] == 0x16 || p[0] == 0x17) && p[1] == 0x03 && (u8)p[2] <= 0x04;
}

/* The per-connection state machine for one read or write of HTTP/1.x bytes: the socket's own, or
 * TLS plaintext (key->tls set). Returns 1 when a pipelined request may be waiting (tail call 1). */
static __always_inline int conn_data(struct conn_key *key, struct io_args *io, u64 id, u64 now)
{
	long ret = io->ret;
	struct conn_state *st = conns.lookup(key);
	/* TLS sessions are matched to their socket in tls.bpf.c; only an fd can be reused here. */
	if (st && (key->tls || st->ev.sock_id == io->sk)) {
		if (st->proto == PROTO_OTHER)
			return 0; /* known non-HTTP connection: ignored cheaply */
		if (st->proto == PROTO_TLS) {
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
		if (ret == 0 && io->dir == DIR_IN && st && (key->tls || st->ev.sock_id == io->sk)) {
			/* EOF: the peer is done. A client can finish now; a server may still answer. */
			st->peer_closed = 1;
			if (st->role == OTELBPF_ROLE_CLIENT)
				on_conn_end(st, now);
		}
		return 0;
	}
	u64 addr = 0, seglen = 0;
	if (first_segment(io, &addr, &seglen, ret))
		return 0;
	char peek[8] = {};
	int method = 0;
	if (addr && seglen >= 8 && !bpf_probe_read_user(peek, sizeof(peek), (void *)addr))
		method = is_method_start(peek);
	else if (addr && seglen >= 3 && !key->tls)
		bpf_probe_read_user(peek, 3, (void *)addr); /* a 5-byte TLS record header read alone */

	if (!key->tls && st && st->ev.sock_id && st->ev.sock_id != io->sk) {
		/* The fd now names another socket (its close was not seen): start afresh. */
		on_conn_end(st, now);
		conns.delete(key);
		st = NULL;
	}
	if (!st) {
		/* A connection that predates otelbpf or whose accept/connect we missed: adopt it at a
		 * request start (the direction tells the role), or at a TLS handshake. */
		u8 proto = PROTO_HTTP;
		if (!method) {
			if (key->tls || seglen < 3 || !is_tls_start(peek))
				return 0;
			proto = PROTO_TLS;
		}
		st = new_conn(key, io->dir == DIR_IN ? OTELBPF_ROLE_SERVER : OTELBPF_ROLE_CLIENT, proto);
		if (!st)
			return 0;
		st->ev.tls = io->lib;
		if (proto == PROTO_TLS)
			return 0;
	}
	if (!st->ev.sock_id && io->sk) {
		st->ev.sock_id = io->sk;
		st->tls_guessed = io->sk_inferred;
		if (io->sk_inferred)
			count(OTELBPF_STAT_TLS_GUESSED);
	}
	if (st->proto == PROTO_UNKNOWN) {
		/* The first bytes on a fresh connection decide: HTTP/1.x request, TLS, or something else. */
		if (!method) {
			st->proto = !key->tls && seglen >= 3 && is_tls_start(peek) ? PROTO_TLS : PROTO_OTHER;
			return 0;
		}
		st->proto = PROTO_HTTP;
	}
	if (!st->addr_known && io->sk) {
		read_addresses(st, io->sk);
		if (st->role == OTELBPF_ROLE_SERVER && is_own_conn(&st->ev.conn)) {
			/* The server end of otelbpf's own export: ignored for the connection's life. */
			st->proto = PROTO_OTHER;
			count(OTELBPF_STAT_OWN_CONNS);
			return 0;
		}
	}

	u8 req_dir = st->role == OTELBPF_ROLE_SERVER ? DIR_IN : DIR_OUT;
	if (io->dir == req_dir) {
		on_request_data(st, io, addr, seglen, ret, now, (u32)id, method);
		if (st->role == OTELBPF_ROLE_SERVER) {
			if (st->state == ST_REQUEST || st->state == ST_SKIP)
				note_serving(id, key, st->ev.start_ns);
		} else if (method && st->state == ST_REQUEST && st->ev.start_ns == io->enter_ns) {
			client_started(st, key, io, id);
		}
	} else {
		st->last_resp_ns = now;
		on_response_data(st, io, addr, seglen, ret, now);
	}
	if (st->check_pipeline) {
		u32 zero = 0;
		struct scratch *s = scratch_map.lookup(&zero);
		if (s) {
			s->key = *key;
			return 1;
		}
		st->check_pipeline = 0;
	}
	return 0;
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

/* One socket read or write (tail-called from every sys_exit hook). */
int process_io(void *ctx)
{
	u64 id = bpf_get_current_pid_tgid();
	struct io_args io;
	if (!take_io(id, &io))
		return 0;
	struct conn_key key = {.tgid = id >> 32, .fd = io.fd};
	if (conn_data(&key, &io, id, bpf_ktime_get_ns()))
		progs.call(ctx, 1);
	return 0;
}

/* After a response completed: start the next pipelined request if one is captured. */
static __always_inline void pipeline_check(void)
{
	u32 zero = 0;
	struct scratch *s = scratch_map.lookup(&zero);
	if (!s)
		return;
	struct conn_key key = s->key;
	struct conn_state *st = conns.lookup(&key);
	if (!st || !st->check_pipeline)
		return;
	st->check_pipeline = 0;
	after_response(st, bpf_ktime_get_ns());
}

/* Tail-called by process_io (program type: tracepoint). */
int check_pipeline(void *ctx)
{
	pipeline_check();
	return 0;
}

#define IO_PROBES(name, dir, fdexpr, bufexpr, cntexpr)                                            \
	TRACEPOINT_PROBE(syscalls, sys_enter_##name)                                               \
	{                                                                                          \
		return save_io(fdexpr, (u64)(bufexpr), cntexpr, dir);                               \
	}                                                                                          \
	TRACEPOINT_PROBE(syscalls, sys_exit_##name)                                                \
	{                                                                                          \
		return handle_io_exit(args, args->ret);                                                   \
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
	if (selection(id >> 32) == UNTRACED)
		return 0;
	active_sock_call.update(&id, &fd);
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
	/* A non-blocking connect returns -EINPROGRESS and completes later; its ports are chosen. */
	if (ret != 0 && ret != -115)
		return 0;
	if (is_self(id >> 32)) {
		remember_own_conn(fd);
		return 0;
	}
	struct conn_key key = {.tgid = id >> 32, .fd = fd};
	struct conn_state *old = conns.lookup(&key);
	if (old)
		on_conn_end(old, bpf_ktime_get_ns());
	struct conn_state *st = new_conn(&key, OTELBPF_ROLE_CLIENT, PROTO_UNKNOWN);
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
	struct conn_key key = {.tgid = id >> 32, .fd = (u32)ret};
	struct conn_state *old = conns.lookup(&key);
	if (old)
		on_conn_end(old, bpf_ktime_get_ns());
	new_conn(&key, OTELBPF_ROLE_SERVER, PROTO_UNKNOWN);
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
		if (ts && ts->ev.sock_id == st->ev.sock_id) {
			on_conn_end(ts, now);
			conns.delete(&tkey);
		}
	}
	on_conn_end(st, now);
	conns.delete(&key);
	return 0;
}
