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

/* Bytes of request line and headers kept per request. A power of two: the kernel masks offsets
 * with (OTELBPF_CAPTURE_BYTES - 1) so the verifier can bound them. */
#ifndef OTELBPF_CAPTURE_BYTES
#define OTELBPF_CAPTURE_BYTES 512
#endif

/* First byte of every ring-buffer record: user space dispatches on raw[0]. */
enum otelbpf_event_type {
	OTELBPF_EVENT_HTTP = 1,
	OTELBPF_EVENT_PROCESS = 2,
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

/* otelbpf_http_event.flags */
#define OTELBPF_HTTP_CONN_CLOSED 0x01 /* connection ended before the response completed */
#define OTELBPF_HTTP_REQ_TRUNCATED 0x02 /* the request had more bytes than were captured */
#define OTELBPF_HTTP_PIPELINED 0x04 /* a request that was queued behind another on the connection */
#define OTELBPF_HTTP_END_INFERRED 0x08 /* response end not delimited; ended by close or next request */
#define OTELBPF_HTTP_NO_RESPONSE 0x10 /* no response bytes were seen at all */
#define OTELBPF_HTTP_CLOSE_DELIMITED 0x20 /* response without length, completed by the close */

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

/* One finished HTTP/1.x request: request and response paired in the kernel. */
struct otelbpf_http_event {
	__u8 type; /* OTELBPF_EVENT_HTTP */
	__u8 role; /* enum otelbpf_role */
	__u8 flags; /* OTELBPF_HTTP_* */
	__u8 tls; /* enum otelbpf_tls_library: OTELBPF_TLS_NONE for plain HTTP */
	__u16 status; /* response status code, 0 when no status line was seen */
	__u16 req_offset; /* where this request starts inside req[] (non-zero when pipelined) */
	__u32 pid; /* tgid of the traced process */
	__u32 tid; /* thread that read (server) or wrote (client) the request */
	__u32 req_len; /* valid bytes in req[] */
	__u32 _pad1;
	__u64 start_ns; /* CLOCK_MONOTONIC */
	__u64 end_ns; /* CLOCK_MONOTONIC */
	__u64 bytes_in; /* bytes the traced process received for this request */
	__u64 bytes_out; /* bytes the traced process sent for this request */
	__u64 sock_id; /* kernel socket identity, stable for the connection's life */
	/* Client requests: start_ns of the server request the same process was serving on this thread
	 * when this request began (or when its connection was opened), 0 when none was in flight. */
	__u64 cause_ns;
	char comm[OTELBPF_COMM_LEN]; /* process name, for when the process is gone before /proc is read */
	struct otelbpf_conn_addr conn;
	char req[OTELBPF_CAPTURE_BYTES]; /* first bytes of request line and headers, as sent */
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

/* Indexes of the per-CPU counter array `stats`. */
enum otelbpf_stat {
	OTELBPF_STAT_REQUESTS = 0, /* request starts recognised */
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
	OTELBPF_STAT_MAX = 16,
};

#endif /* OTELBPF_EVENTS_H */
