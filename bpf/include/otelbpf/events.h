/* The whole kernel/user contract: every record that crosses the ring buffer, and the counters.
 *
 * otelbpf/events.py mirrors this file; tests/unit/test_events_mirror.py compiles it with gcc and
 * compares sizeof/offsetof with the mirror, so change both together.
 *
 * Structs carry explicit padding and are never packed: the layout is the same for clang (BPF) and
 * gcc (the mirror test) and every field is naturally aligned.
 */
#ifndef OTELBPF_EVENTS_H
#define OTELBPF_EVENTS_H

/* Bytes of each request kept per record, and of each response. Powers of two: the kernel masks
 * offsets with them so the verifier can bound them. */
#ifndef OTELBPF_CAPTURE_BYTES
#define OTELBPF_CAPTURE_BYTES 512
#endif
#ifndef OTELBPF_RESP_CAPTURE_BYTES
#define OTELBPF_RESP_CAPTURE_BYTES 256
#endif

/* First byte of every ring-buffer record: user space dispatches on raw[0]. */
enum otelbpf_event_type {
	OTELBPF_EVENT_REQUEST = 1,
	OTELBPF_EVENT_PROCESS = 2,
	OTELBPF_EVENT_TASK = 3, /* on its own ring buffer, task_events: see struct otelbpf_task_event */
	OTELBPF_EVENT_CONNECT = 4, /* a connect() that failed: see struct otelbpf_connect_event */
};

/* What a connection carries, decided in the kernel from its first bytes. User space picks the
 * protocol's module by this number, and the kernel its state machine (tail-call index). */
enum otelbpf_protocol {
	OTELBPF_PROTO_UNKNOWN = 0,
	OTELBPF_PROTO_HTTP1 = 1,
	OTELBPF_PROTO_POSTGRES = 2,
	OTELBPF_PROTO_REDIS = 3,
	OTELBPF_PROTO_MYSQL = 4,
	OTELBPF_PROTO_MAX = 8,
};

#define OTELBPF_COMM_LEN 16
#define OTELBPF_FILENAME_LEN 256
#define OTELBPF_ARGS_LEN 512

enum otelbpf_role {
	OTELBPF_ROLE_SERVER = 1,
	OTELBPF_ROLE_CLIENT = 2,
};

/* Where the bytes of a request were read: the socket itself, or a TLS library's plaintext. */
enum otelbpf_tls_library {
	OTELBPF_TLS_NONE = 0,
	OTELBPF_TLS_OPENSSL = 1,
	OTELBPF_TLS_GNUTLS = 2,
};

/* How a request ended: the response completed, or something else decided the end. */
enum otelbpf_end {
	OTELBPF_END_COMPLETE = 0, /* the response was delimited and seen whole */
	OTELBPF_END_CONN_CLOSED = 1, /* the connection ended before the response completed */
	OTELBPF_END_NO_RESPONSE = 2, /* the connection ended before any response byte */
	OTELBPF_END_INFERRED = 3, /* response not delimited; ended by the next request */
	OTELBPF_END_CLOSE_DELIMITED = 4, /* response without length, completed by the close */
};

/* otelbpf_record_header.flags */
#define OTELBPF_FLAG_REQ_TRUNCATED 0x01 /* the request had more bytes than were captured */
#define OTELBPF_FLAG_PIPELINED 0x02 /* queued behind another request on the connection */
#define OTELBPF_FLAG_ERROR 0x04 /* the protocol's own error reply was seen */
#define OTELBPF_FLAG_RESP_TRUNCATED 0x08 /* the response had more bytes than were captured */

/* otelbpf_record_header.tcp_flags */
#define OTELBPF_TCP_KNOWN 0x01 /* the socket's TCP facts were read: retransmits and srtt_us are valid */
#define OTELBPF_TCP_RESET 0x02 /* a reset was sent or received on the connection */
#define OTELBPF_TCP_CONNECT 0x04 /* connect_us is valid: the first request of a connection this process opened */

/* Addresses of one TCP connection, from the traced process's side. IPv4 addresses sit in the first
 * four bytes of the 16-byte arrays; ports are in host byte order. */
struct otelbpf_conn_addr {
	__u8 local_addr[16];
	__u8 peer_addr[16];
	__u16 local_port;
	__u16 peer_port;
	__u16 family; /* AF_INET (2), AF_INET6 (10), or 0 when unknown */
	__u16 _pad;
};

/* What every request record starts with, whatever its protocol: the linker, the exporters and the
 * console need nothing else. */
struct otelbpf_record_header {
	__u8 type; /* OTELBPF_EVENT_REQUEST */
	__u8 protocol; /* enum otelbpf_protocol */
	__u8 role; /* enum otelbpf_role */
	__u8 tls; /* enum otelbpf_tls_library: OTELBPF_TLS_NONE for plain sockets */
	__u8 end; /* enum otelbpf_end */
	__u8 flags; /* OTELBPF_FLAG_* */
	__u16 status; /* the protocol's status number if it has one (HTTP status), else 0 */
	__u32 pid; /* tgid of the traced process */
	__u32 tid; /* thread that read (server) or wrote (client) the request */
	__u64 start_ns; /* CLOCK_MONOTONIC */
	__u64 end_ns; /* CLOCK_MONOTONIC */
	/* Client requests: start_ns of the server request the same process was serving on this thread
	 * when this request began (or when its connection was opened), 0 when none was in flight. */
	__u64 cause_ns;
	__u64 bytes_in; /* bytes the traced process received for this request */
	__u64 bytes_out; /* bytes the traced process sent for this request */
	__u64 sock_id; /* kernel socket identity, stable for the connection's life */
	char comm[OTELBPF_COMM_LEN]; /* process name, for when the process is gone before /proc is read */
	struct otelbpf_conn_addr conn;
	/* What the kernel's TCP stack knew of the connection, read from its socket (tcp_flags says what
	 * is valid). A failed connect's record holds only connect_us. */
	__u32 retransmits; /* segments this socket retransmitted between the request's start and end */
	__u32 srtt_us; /* the socket's smoothed round-trip time at the request's end */
	__u32 connect_us; /* from connect() to established (or to the failure) */
	__u8 tcp_flags; /* OTELBPF_TCP_* */
	__u8 _pad[3];
};

/* The protocol's own bytes, after the header: the first bytes of the request, then the first bytes
 * of the response. A record is sent only as long as the bytes it holds: data[] is cut after
 * req_len + resp_len. */
struct otelbpf_payload {
	__u16 req_len; /* request bytes at data[0] */
	__u16 resp_len; /* response bytes at data[req_len] */
	__u16 req_offset; /* where this request starts inside the request bytes (non-zero when pipelined) */
	__u16 count; /* messages in the request, when the protocol counts them (a pipeline's commands) */
	char data[OTELBPF_CAPTURE_BYTES + OTELBPF_RESP_CAPTURE_BYTES];
};

/* One finished request: request and response paired in the kernel. */
struct otelbpf_request_event {
	struct otelbpf_record_header h;
	struct otelbpf_payload p;
};

/* A connect() of a traced process that never reached ESTABLISHED: refused, timed out, unreachable,
 * or given up by the process (closed while the handshake was pending, as a client's own connect
 * timeout does). The header alone: type OTELBPF_EVENT_CONNECT, role client, protocol 0, status the
 * socket's error (errno: ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH, ...; 0 when the process gave up),
 * start_ns at connect(), end_ns at the failure, cause_ns, tid and comm as at connect(). */
struct otelbpf_connect_event {
	struct otelbpf_record_header h;
};

/* A traced process started a program (exec). Sent so that a process which lives only a few
 * milliseconds (curl) still gets its resource: by the time user space reads /proc it may be gone. */
struct otelbpf_process_event {
	__u8 type; /* OTELBPF_EVENT_PROCESS */
	__u8 _pad0[3];
	__u32 pid; /* tgid */
	__u32 filename_len; /* bytes in filename[] including the NUL, 0 if unread */
	__u32 args_len; /* bytes in args[]: NUL-separated argv */
	char comm[OTELBPF_COMM_LEN];
	char filename[OTELBPF_FILENAME_LEN]; /* the path exec'd, as given */
	char args[OTELBPF_ARGS_LEN];
};

/* What happened to a traced process, for the thread that keeps its TLS libraries hooked. */
enum otelbpf_task_kind {
	OTELBPF_TASK_FORK = 1, /* a traced process forked: pid is the child, parent its parent */
	OTELBPF_TASK_EXEC = 2, /* a traced process started a program */
	OTELBPF_TASK_MAP = 3, /* a traced process mapped a file executable (the loader, dlopen) */
	OTELBPF_TASK_EXIT = 4, /* a process with per-process TLS probes ended (its last thread) */
};

/* One process event, sent on task_events (not the request ring) so that the thread hooking TLS
 * libraries wakes at once, whatever the request traffic. */
struct otelbpf_task_event {
	__u8 type; /* OTELBPF_EVENT_TASK */
	__u8 kind; /* enum otelbpf_task_kind */
	__u8 _pad0[2];
	__u32 pid; /* tgid */
	__u32 parent; /* OTELBPF_TASK_FORK: the parent's tgid; 0 otherwise */
	__u32 _pad1;
	__u64 ns; /* CLOCK_MONOTONIC when it happened: how long the process ran unhooked is measured from it */
};

/* Indexes of the per-CPU counter array `stats`. */
enum otelbpf_stat {
	OTELBPF_STAT_REQUESTS = 0, /* request starts recognised, and failed connects */
	OTELBPF_STAT_EVENTS = 1, /* records written to the ring buffer */
	OTELBPF_STAT_LOST_RINGBUF_FULL = 2, /* records lost: ring buffer full */
	OTELBPF_STAT_SAMPLED_OUT = 3, /* requests shed by the rate limit, decided at their start */
	OTELBPF_STAT_ORPHAN_RESPONSES = 4, /* responses with no tracked request (evicted or pre-existing) */
	OTELBPF_STAT_READ_FAULTS = 5, /* user memory could not be read; capture incomplete */
	OTELBPF_STAT_TARGETS_FULL = 6, /* a process could not be added to the target table */
	OTELBPF_STAT_IO_TABLE_FULL = 7, /* a syscall went untracked: too many threads mid-syscall */
	OTELBPF_STAT_RINGBUF_RETRIED = 8, /* a ring-buffer write failed once and was retried */
	OTELBPF_STAT_TLS_PROBE_HITS = 9, /* TLS uprobe and uretprobe hits in any process (the cost) */
	OTELBPF_STAT_TLS_UNBOUND = 10, /* TLS plaintext whose socket is not known (no addresses) */
	OTELBPF_STAT_TLS_TABLE_FULL = 11, /* a TLS call went untracked: too many threads mid-call */
	OTELBPF_STAT_TLS_GUESSED = 12, /* TLS sessions tied to the thread's last TLS socket (memory BIO) */
	OTELBPF_STAT_TLS_REBOUND = 13, /* such guesses corrected by a socket seen inside a later call */
	OTELBPF_STAT_OWN_CONNS = 14, /* server ends of otelbpf's own export connections, not traced */
	OTELBPF_STAT_TASK_EVENTS_LOST = 15, /* process events lost: task_events ring full */
	OTELBPF_STAT_CONNECT_FAILURES = 16, /* failed connects of traced processes sent as records */
	OTELBPF_STAT_MAX = 17,
};

#endif /* OTELBPF_EVENTS_H */
