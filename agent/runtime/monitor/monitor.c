/*
 * dockyard-monitor: what stays of a container's shim once the container runs.
 *
 * The Python shim sets the container up (cgroup, rootfs, namespaces, network), then execs this
 * program in its own place. The container's init stays our child and we stay its subreaper: both
 * survive execve. A forked CPython keeps ~2.8 MiB of private pages for as long as it lives; this
 * keeps a few hundred KiB (BENCHMARKS.md), which is what conmon does for podman.
 *
 * What it does until the init exits:
 *   - copies the container's stdout/stderr (two pipes, or one pty master) into the log, in docker's
 *     json-file format, and to every attached client;
 *   - serves the shim's unix socket, speaking agent/runtime/frames.py: HELLO on accept; from a
 *     client STDIN, CLOSE_STDIN, RESIZE {"rows","cols"}, RELEASE; to clients STDOUT, STDERR, EXIT;
 *   - sends the init {"op": "go"} on its control socket (at once, or on RELEASE when held) and
 *     records the exec error the init may report there ({"op": "error", "error": ...});
 *   - reaps every child (orphans of --pid host containers included).
 * When the init has exited: drain the pipes (at most 2 s), unlink the socket, write exit.json
 * {"exit_code", "finished_at", "error"}, send EXIT to the clients; then unmount the rootfs and
 * remove the (now empty) cgroup directories, and exit. Those two are the slow part of a teardown
 * (an RCU grace period each) and start here a few ms before the agent hears of the exit. The agent
 * reads the OOM count first, waits for this process to end, and then finishes the teardown
 * (agent/containers.py): whatever is left in the cgroup, the network; all of it idempotent.
 *
 * Arguments (all required unless said):
 *   --pid N --started-at FLOAT --tty 0|1 --released 0|1
 *   --listen FD          the bound, listening unix socket      --socket PATH  its path, to unlink
 *   --ctl FD | -1        the init's control socket (SOCK_SEQPACKET; -1 once exec'd or restored)
 *   --stdout FD --stderr FD   output pipes (-1 with a tty)   --pty FD | -1   the pty master
 *   --stdin FD | -1      the write end of the init's stdin pipe
 *   --log PATH | ""      container.log ("": the none driver, no log)    --exit PATH   exit.json
 *   --log-max-size N     optional: rotate the log before it would grow past N bytes (docker's
 *                        json-file max-size); 0 = never
 *   --log-max-file K     optional: keep K files in all (PATH, PATH.1 ... PATH.K-1, the oldest
 *                        dropped); 1 = truncate PATH instead (as docker)
 *   --log-compress 0|1   optional: gzip PATH.1 after each rotation, in a child (PATH.1.gz)
 *   --log-format json|local   optional: docker's json-file lines (the default) or docker's local
 *                        driver's records (a protobuf LogEntry framed by its size, big-endian, before
 *                        and after: daemon/logger/local in moby)
 *   --log-attr KEY=VALUE optional, repeated, sorted by KEY: the log opts tag/labels/env's attributes,
 *                        written into every entry ("attrs" of a json line, LogAttr of a local record)
 *   --error TEXT         optional: why the container was ended before it could run (for exit.json)
 *   --rootfs PATH        optional: the rootfs mount to detach after the exit
 *   --cgroup DIR         optional, repeated: cgroup directories to remove after the exit
 *   --client FD          optional, repeated: a connected socket served as a client attached from
 *                        the start (an attach that started the container), sent HELLO first
 *   --oom-events FILE    optional: memory.oom_control (v1) or memory.events (v2), read for its
 *                        "oom_kill N" line before the cgroup goes; exit.json then has "oom_killed"
 * DOCKYARD_TRACE=FILE appends monotonic time stamps, like agent/runtime/shim.py trace().
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#define MAX_CLIENTS 64
#define MAX_FRAME (1u << 20)
#define DRAIN_MS 2000
#define MAX_CGROUPS 16

enum { F_STDIN = 'i', F_CLOSE_STDIN = 'c', F_RESIZE = 'r', F_RELEASE = 'g',
       F_HELLO = 'h', F_STDOUT = 'o', F_STDERR = 'e', F_EXIT = 'x' };

struct buf { char *p; size_t len, cap; };

struct client { int fd; struct buf in; };

static struct {
    pid_t pid;
    double started_at;
    int tty, released;
    int listen_fd, ctl, out, err, pty, in_w;
    const char *socket_path, *log_path, *exit_path, *trace_path, *rootfs, *oom_events;
    const char *cgroups[MAX_CGROUPS];
    int ncgroups;
    int log_fd, sig_fd;
    long long log_size, log_max_size;   /* bytes in the current file; 0 = no rotation */
    int log_max_file, log_compress;
    int log_rotated;                    /* PATH.1 ... PATH.N exist: only those are renamed */
    int log_local;                      /* docker's local format, not json-file's */
    struct buf log_attrs;               /* json: `, "attrs": {...}`; local: the LogAttr fields */
    struct { char id[40]; int ordinal; } partial[2];  /* local: a stdout/stderr line in pieces */
    pid_t compress_pid;                 /* the child gzipping PATH.1, until reaped */
    struct client clients[MAX_CLIENTS];
    int nclients;
    struct buf stdin_buf;
    int close_stdin_pending;
    char *exec_error;            /* UTF-8, as the init reported it */
    int exited, status;
} m = { .ctl = -1, .out = -1, .err = -1, .pty = -1, .in_w = -1, .listen_fd = -1, .log_fd = -1,
        .log_max_file = 1 };

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("dockyard-monitor: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static void trace(const char *what) {
    if (!m.trace_path)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    FILE *f = fopen(m.trace_path, "a");
    if (f) {
        fprintf(f, "%ld.%06ld %d %s\n", (long)ts.tv_sec, ts.tv_nsec / 1000, (int)getpid(), what);
        fclose(f);
    }
}

static void buf_add(struct buf *b, const void *data, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            die("out of memory");
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void buf_drop(struct buf *b, size_t n) {
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}

static void buf_free(struct buf *b) {
    free(b->p);
    memset(b, 0, sizeof(*b));
}

/* Write all of it, waiting out a full pipe or pty; 0 if the reader has gone. */
static int write_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                struct pollfd pf = { .fd = fd, .events = POLLOUT };
                poll(&pf, 1, 100);
                continue;
            }
            return 0;
        }
        p += w;
        n -= (size_t)w;
    }
    return 1;
}

/* --- JSON: just what our own messages need ------------------------------------------------- */

/* Append s[0..n) as the inside of a JSON string. Valid UTF-8 passes through; a byte that is not
 * becomes U+FFFD, as Python's decode("utf-8", "replace") in the json-file readers expects. */
static void json_escape(struct buf *b, const unsigned char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c == '"' || c == '\\') {
            char e[2] = { '\\', (char)c };
            buf_add(b, e, 2);
            i++;
        } else if (c < 0x20) {
            const char *e = c == '\n' ? "\\n" : c == '\t' ? "\\t" : c == '\r' ? "\\r"
                          : c == '\b' ? "\\b" : c == '\f' ? "\\f" : NULL;
            if (e) {
                buf_add(b, e, 2);
            } else {
                char u[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] };
                buf_add(b, u, 6);
            }
            i++;
        } else if (c < 0x80) {
            buf_add(b, &c, 1);
            i++;
        } else {
            size_t len = (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
            int ok = len && i + len <= n && c >= 0xc2 && c <= 0xf4;
            for (size_t k = 1; ok && k < len; k++)
                ok = (s[i + k] & 0xc0) == 0x80;
            if (ok && len == 3) {   /* no overlongs, no surrogates */
                ok = !(c == 0xe0 && s[i + 1] < 0xa0) && !(c == 0xed && s[i + 1] >= 0xa0);
            } else if (ok && len == 4) {
                ok = !(c == 0xf0 && s[i + 1] < 0x90) && !(c == 0xf4 && s[i + 1] >= 0x90);
            }
            if (ok) {
                buf_add(b, s + i, len);
                i += len;
            } else {
                buf_add(b, "\xef\xbf\xbd", 3);
                i++;
            }
        }
    }
}

static void utf8_put(struct buf *b, unsigned cp) {
    unsigned char o[4];
    size_t n;
    if (cp < 0x80) { o[0] = (unsigned char)cp; n = 1; }
    else if (cp < 0x800) { o[0] = (unsigned char)(0xc0 | cp >> 6); o[1] = (unsigned char)(0x80 | (cp & 63)); n = 2; }
    else if (cp < 0x10000) {
        o[0] = (unsigned char)(0xe0 | cp >> 12); o[1] = (unsigned char)(0x80 | (cp >> 6 & 63));
        o[2] = (unsigned char)(0x80 | (cp & 63)); n = 3;
    } else {
        o[0] = (unsigned char)(0xf0 | cp >> 18); o[1] = (unsigned char)(0x80 | (cp >> 12 & 63));
        o[2] = (unsigned char)(0x80 | (cp >> 6 & 63)); o[3] = (unsigned char)(0x80 | (cp & 63)); n = 4;
    }
    buf_add(b, o, n);
}

static int hex4(const char *p, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return 0;
    }
    *out = v;
    return 1;
}

/* The string value of "key" in a flat JSON object written by Python's json.dumps; NULL if absent. */
static char *json_string(const char *json, size_t n, const char *key) {
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":", key);
    const char *end = json + n;
    const char *p = memmem(json, n, pat, strlen(pat));
    if (!p)
        return NULL;
    p += strlen(pat);
    while (p < end && *p == ' ')
        p++;
    if (p >= end || *p != '"')
        return NULL;
    p++;
    struct buf b = { 0 };
    while (p < end && *p != '"') {
        if (*p != '\\') {
            buf_add(&b, p++, 1);
            continue;
        }
        if (++p >= end)
            break;
        char c = *p++;
        switch (c) {
        case 'n': buf_add(&b, "\n", 1); break;
        case 't': buf_add(&b, "\t", 1); break;
        case 'r': buf_add(&b, "\r", 1); break;
        case 'b': buf_add(&b, "\b", 1); break;
        case 'f': buf_add(&b, "\f", 1); break;
        case 'u': {
            unsigned cp, lo;
            if (end - p < 4 || !hex4(p, &cp))
                goto out;
            p += 4;
            if (cp >= 0xd800 && cp < 0xdc00 && end - p >= 6 && p[0] == '\\' && p[1] == 'u'
                && hex4(p + 2, &lo) && lo >= 0xdc00 && lo < 0xe000) {
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                p += 6;
            }
            utf8_put(&b, cp);
            break;
        }
        default: buf_add(&b, &c, 1);
        }
    }
out:
    buf_add(&b, "", 1);
    return b.p;
}

/* A positive integer value of "key"; -1 if absent. */
static long json_int(const char *json, size_t n, const char *key) {
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":", key);
    const char *p = memmem(json, n, pat, strlen(pat));
    if (!p)
        return -1;
    p += strlen(pat);
    while (p < json + n && *p == ' ')
        p++;
    if (p >= json + n || *p < '0' || *p > '9')
        return -1;
    return strtol(p, NULL, 10);
}

/* --- frames to clients ------------------------------------------------------------------- */

static void frame_header(char h[5], char kind, size_t len) {
    h[0] = kind;
    h[1] = (char)(len >> 24);
    h[2] = (char)(len >> 16);
    h[3] = (char)(len >> 8);
    h[4] = (char)len;
}

static void drop_client(int i) {
    close(m.clients[i].fd);
    buf_free(&m.clients[i].in);
    m.clients[i] = m.clients[--m.nclients];
}

/* Blocking sends with a 2 s timeout (SO_SNDTIMEO): a client that stops reading is dropped rather
 * than stalling the container's output. */
static int send_frame(int fd, char kind, const char *data, size_t len) {
    char h[5];
    frame_header(h, kind, len);
    struct iovec iov[2] = { { h, 5 }, { (void *)data, len } };
    struct msghdr msg = { .msg_iov = iov, .msg_iovlen = len ? 2 : 1 };
    size_t total = 5 + len;
    while (total) {
        ssize_t w = sendmsg(fd, &msg, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return 0;
        }
        total -= (size_t)w;
        while (w > 0 && msg.msg_iovlen) {
            if ((size_t)w >= msg.msg_iov[0].iov_len) {
                w -= (ssize_t)msg.msg_iov[0].iov_len;
                msg.msg_iov++;
                msg.msg_iovlen--;
            } else {
                msg.msg_iov[0].iov_base = (char *)msg.msg_iov[0].iov_base + w;
                msg.msg_iov[0].iov_len -= (size_t)w;
                w = 0;
            }
        }
    }
    return 1;
}

static void broadcast(char kind, const char *data, size_t len) {
    for (int i = 0; i < m.nclients;) {
        if (send_frame(m.clients[i].fd, kind, data, len))
            i++;
        else
            drop_client(i);
    }
}

/* --- the log ----------------------------------------------------------------------------- */

static void now_rfc3339(char out[40]) {
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    size_t n = strftime(out, 40, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 40 - n, ".%06ldZ", (long)tv.tv_usec);
}

/* PATH.i, or PATH.i.gz when the rotated files are compressed. */
static void rotated_name(char *out, size_t n, int i, int gz) {
    snprintf(out, n, "%s.%d%s", m.log_path, i, gz ? ".gz" : "");
}

/* Gzip PATH.1 into PATH.1.gz (through a temporary name, so a reader sees one or the other whole)
 * and remove PATH.1. In a forked child, as docker does it in a goroutine: the container's output
 * goes on meanwhile. The next rotation waits for it, so the renames never race the child. */
static void compress_rotated(void) {
    pid_t p = fork();
    if (p != 0) {
        if (p > 0)
            m.compress_pid = p;
        return;
    }
    char src[4096], dst[4096], tmp[4200];
    rotated_name(src, sizeof(src), 1, 0);
    rotated_name(dst, sizeof(dst), 1, 1);
    snprintf(tmp, sizeof(tmp), "%s.tmp", dst);
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        _exit(1);
    gzFile out = gzopen(tmp, "wb1");   /* the fastest level: it competes with the writer for CPU */
    if (!out)
        _exit(1);
    char data[65536];
    ssize_t r;
    while ((r = read(in, data, sizeof(data))) > 0) {
        if (gzwrite(out, data, (unsigned)r) != (int)r) {
            gzclose(out);
            unlink(tmp);
            _exit(1);
        }
    }
    if (gzclose(out) != Z_OK || r < 0 || rename(tmp, dst) != 0) {
        unlink(tmp);
        _exit(1);
    }
    unlink(src);
    _exit(0);
}

static void wait_compress(void) {
    if (m.compress_pid > 0) {
        int st;
        while (waitpid(m.compress_pid, &st, 0) < 0 && errno == EINTR) {}
        m.compress_pid = 0;
    }
}

/* docker's json-file rotation: PATH.K-2 -> PATH.K-1 ... PATH -> PATH.1, then a new PATH (the oldest
 * is overwritten by the first rename); with one file, PATH is truncated instead. */
static void log_rotate(void) {
    if (m.log_max_file < 2) {
        if (ftruncate(m.log_fd, 0) == 0)
            m.log_size = 0;
        return;
    }
    wait_compress();
    char from[4096], to[4096];
    /* (from the newest file that exists, not from max-file: a huge max-file costs nothing) */
    int top = m.log_rotated + 1 < m.log_max_file - 1 ? m.log_rotated + 1 : m.log_max_file - 1;
    for (int i = top; i > 1; i--) {
        rotated_name(from, sizeof(from), i - 1, m.log_compress);
        rotated_name(to, sizeof(to), i, m.log_compress);
        rename(from, to);
    }
    rotated_name(to, sizeof(to), 1, 0);
    if (rename(m.log_path, to) != 0)
        return;   /* keep writing where we are rather than lose output */
    int fd = open(m.log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (fd < 0)
        return;   /* the same: the renamed file goes on growing until the next try */
    close(m.log_fd);
    m.log_fd = fd;
    m.log_size = 0;
    if (m.log_rotated < m.log_max_file - 1)
        m.log_rotated++;
    if (m.log_compress)
        compress_rotated();
}

static void log_flush(struct buf *b) {
    if (b->len) {
        write_all(m.log_fd, b->p, b->len);
        m.log_size += (long long)b->len;
        b->len = 0;
    }
}

/* --- docker's local format: protobuf by hand, for the few fields of its LogEntry ------------- */

static void pb_varint(struct buf *b, uint64_t v) {
    unsigned char c[10];
    size_t n = 0;
    do {
        c[n] = (unsigned char)(v & 0x7f);
        v >>= 7;
        if (v)
            c[n] |= 0x80;
        n++;
    } while (v);
    buf_add(b, c, n);
}

static void pb_bytes(struct buf *b, unsigned field, const void *p, size_t n) {
    pb_varint(b, field << 3 | 2);
    pb_varint(b, n);
    buf_add(b, p, n);
}

/* --log-attr KEY=VALUE, in the order given (the agent sorts them, as docker does). */
static void log_attr(const char *kv) {
    const char *eq = strchr(kv, '=');
    if (!eq)
        die("--log-attr %s: expected KEY=VALUE", kv);
    size_t kn = (size_t)(eq - kv), vn = strlen(eq + 1);
    struct buf *b = &m.log_attrs;
    if (m.log_local) {
        struct buf a = { 0 };
        pb_bytes(&a, 1, kv, kn);
        pb_bytes(&a, 2, eq + 1, vn);
        pb_bytes(b, 6, a.p, a.len);
        buf_free(&a);
        return;
    }
    /* json: `, "attrs": {"k": "v", ...` here; the closing brace once all are in (main) */
    buf_add(b, b->len ? ", \"" : ", \"attrs\": {\"", b->len ? 3 : 13);
    json_escape(b, (const unsigned char *)kv, kn);
    buf_add(b, "\": \"", 4);
    json_escape(b, (const unsigned char *)eq + 1, vn);
    buf_add(b, "\"", 1);
}

/* One local record: a line without its newline; a piece of a line (no newline yet) is partial,
 * with docker's metadata (an id per line, the piece's ordinal from 1, last on the piece that ends
 * it), so that a reader puts the pieces together and adds the newline after the last. */
static void local_entry(struct buf *b, const char *stream, const char *p, size_t n) {
    struct buf e = { 0 };
    int idx = stream[3] == 'e';   /* "stderr" */
    int ends = n && p[n - 1] == '\n';
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    pb_bytes(&e, 1, stream, strlen(stream));
    pb_varint(&e, 2 << 3 | 0);
    pb_varint(&e, (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec);
    pb_bytes(&e, 3, p, ends ? n - 1 : n);
    if (!ends || m.partial[idx].ordinal) {
        if (!m.partial[idx].ordinal)
            snprintf(m.partial[idx].id, sizeof(m.partial[idx].id), "%lx%09lx%d", (long)ts.tv_sec,
                     ts.tv_nsec, idx);
        struct buf md = { 0 };
        if (ends) {
            pb_varint(&md, 1 << 3 | 0);
            pb_varint(&md, 1);
        }
        pb_bytes(&md, 2, m.partial[idx].id, strlen(m.partial[idx].id));
        pb_varint(&md, 3 << 3 | 0);
        pb_varint(&md, (uint64_t)++m.partial[idx].ordinal);
        pb_varint(&e, 4 << 3 | 0);
        pb_varint(&e, 1);
        pb_bytes(&e, 5, md.p, md.len);
        buf_free(&md);
        if (ends)
            m.partial[idx].ordinal = 0;
    }
    if (m.log_attrs.len)
        buf_add(&e, m.log_attrs.p, m.log_attrs.len);
    unsigned char size[4] = { (unsigned char)(e.len >> 24), (unsigned char)(e.len >> 16),
                              (unsigned char)(e.len >> 8), (unsigned char)e.len };
    buf_add(b, size, 4);
    buf_add(b, e.p, e.len);
    buf_add(b, size, 4);
    buf_free(&e);
}

/* One json-file entry per line; a chunk that does not end in a newline ends in a partial entry,
 * as docker's json-file driver writes it. An entry that would take the file past max-size goes
 * into the next file (so a file only passes max-size by an entry larger than max-size). */
static void log_write(const char *stream, const char *data, size_t n) {
    if (m.log_fd < 0)
        return;
    char ts[40];
    now_rfc3339(ts);
    struct buf b = { 0 };
    size_t start = 0;
    while (start < n) {
        const char *nl = memchr(data + start, '\n', n - start);
        size_t end = nl ? (size_t)(nl - data) + 1 : n;
        size_t before = b.len;
        if (m.log_local) {
            local_entry(&b, stream, data + start, end - start);
        } else {
            buf_add(&b, "{\"log\": \"", 9);
            json_escape(&b, (const unsigned char *)data + start, end - start);
            buf_add(&b, "\", \"stream\": \"", 14);
            buf_add(&b, stream, strlen(stream));
            buf_add(&b, "\"", 1);
            if (m.log_attrs.len)   /* docker's order: log, stream, attrs, time */
                buf_add(&b, m.log_attrs.p, m.log_attrs.len);
            buf_add(&b, ", \"time\": \"", 11);
            buf_add(&b, ts, strlen(ts));
            buf_add(&b, "\"}\n", 3);
        }
        if (m.log_max_size > 0 && m.log_size + (long long)b.len > m.log_max_size
                && m.log_size + (long long)before > 0) {
            /* write what fits, rotate, and start the new file with this entry */
            size_t entry = b.len - before;
            b.len = before;
            log_flush(&b);
            log_rotate();
            memmove(b.p, b.p + before, entry);
            b.len = entry;
        }
        start = end;
    }
    log_flush(&b);
    buf_free(&b);
}

/* --- the container's side ------------------------------------------------------------------ */

static void send_go(void) {
    static const char go[] = "{\"op\": \"go\"}";
    if (m.ctl >= 0)
        send(m.ctl, go, sizeof(go) - 1, MSG_NOSIGNAL);
}

/* Returns 1 when a message was read, 0 when there was none (or the socket closed). */
static int ctl_read(void) {
    char msg[65536];
    ssize_t n = recv(m.ctl, msg, sizeof(msg), 0);
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return 0;
    if (n <= 0) {   /* execve happened (the init's end is close-on-exec) or the init died */
        close(m.ctl);
        m.ctl = -1;
        return 0;
    }
    char *op = json_string(msg, (size_t)n, "op");
    if (op && strcmp(op, "error") == 0) {
        char *err = json_string(msg, (size_t)n, "error");
        if (err) {
            free(m.exec_error);
            m.exec_error = err;
            struct buf line = { 0 };
            buf_add(&line, err, strlen(err));
            buf_add(&line, "\n", 1);
            log_write("stderr", line.p, line.len);
            broadcast(F_STDERR, line.p, line.len);
            buf_free(&line);
        }
    }
    free(op);
    return 1;
}

/* Returns 0 at EOF (the fd is closed and forgotten). */
static int output_read(int *fdp, char kind) {
    char data[65536];
    ssize_t n = read(*fdp, data, sizeof(data));
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return 1;
    if (n <= 0) {   /* EOF, or EIO: the pty's last writer has gone */
        if (*fdp != m.pty)
            close(*fdp);
        *fdp = -1;
        return 0;
    }
    log_write(kind == F_STDOUT ? "stdout" : "stderr", data, (size_t)n);
    broadcast(kind, data, (size_t)n);
    return 1;
}

static void close_stdin(void) {
    if (m.in_w < 0)
        return;
    if (m.stdin_buf.len) {
        m.close_stdin_pending = 1;
        return;
    }
    close(m.in_w);
    m.in_w = -1;
}

static void flush_stdin(void) {
    while (m.stdin_buf.len && m.in_w >= 0) {
        ssize_t w = write(m.in_w, m.stdin_buf.p, m.stdin_buf.len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                return;
            m.stdin_buf.len = 0;   /* the container closed its stdin */
            break;
        }
        buf_drop(&m.stdin_buf, (size_t)w);
    }
    if (m.close_stdin_pending && !m.stdin_buf.len)
        close_stdin();
}

/* --- clients ------------------------------------------------------------------------------ */

static void add_client(int fd) {
    if (m.nclients == MAX_CLIENTS) {
        close(fd);
        return;
    }
    struct timeval to = { .tv_sec = 2 };
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &to, sizeof(to));
    char hello[128];
    int n = snprintf(hello, sizeof(hello), "{\"pid\": %d, \"started_at\": %.6f, \"tty\": %s}",
                     (int)m.pid, m.started_at, m.tty ? "true" : "false");
    if (!send_frame(fd, F_HELLO, hello, (size_t)n)) {
        close(fd);
        return;
    }
    m.clients[m.nclients++] = (struct client){ .fd = fd };
}

static void accept_client(void) {
    int fd = accept4(m.listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd >= 0)
        add_client(fd);
}

static void client_frame(char kind, const char *p, size_t len) {
    if (kind == F_STDIN) {
        if (m.pty >= 0) {
            write_all(m.pty, p, len);
        } else if (m.in_w >= 0) {
            buf_add(&m.stdin_buf, p, len);
            flush_stdin();
        }
    } else if (kind == F_CLOSE_STDIN) {
        close_stdin();
    } else if (kind == F_RESIZE && m.pty >= 0) {
        long rows = json_int(p, len, "rows"), cols = json_int(p, len, "cols");
        if (rows > 0 && cols > 0 && rows < 65536 && cols < 65536) {
            struct winsize ws = { .ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols };
            ioctl(m.pty, TIOCSWINSZ, &ws);
        }
    } else if (kind == F_RELEASE && !m.released) {
        m.released = 1;
        send_go();
    }
}

/* Returns 0 if the client is gone or spoke nonsense (the caller drops it). */
static int client_read(struct client *c) {
    char data[65536];
    ssize_t n = recv(c->fd, data, sizeof(data), 0);
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return 1;
    if (n <= 0)
        return 0;
    buf_add(&c->in, data, (size_t)n);
    while (c->in.len >= 5) {
        const unsigned char *h = (const unsigned char *)c->in.p;
        uint32_t len = (uint32_t)h[1] << 24 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 8 | h[4];
        if (len > MAX_FRAME)
            return 0;
        if (c->in.len < 5 + len)
            break;
        client_frame((char)h[0], c->in.p + 5, len);
        buf_drop(&c->in, 5 + len);
    }
    return 1;
}

/* --- the loop ----------------------------------------------------------------------------- */

static void reap(void) {
    for (;;) {
        int status;
        pid_t p = waitpid(-1, &status, WNOHANG);
        if (p <= 0)
            return;
        if (p == m.compress_pid)
            m.compress_pid = 0;
        if (p == m.pid && !m.exited) {
            m.exited = 1;
            m.status = status;
        }
    }
}

/* One poll round; `serving` is 0 while draining (only the outputs then). */
static void poll_once(int timeout_ms, int serving) {
    struct pollfd pf[8 + MAX_CLIENTS];
    int n = 0;
    int i_out = -1, i_err = -1, i_pty = -1, i_ctl = -1, i_listen = -1, i_sig = -1, i_in = -1, i_cl = 0;
    if (m.out >= 0) { i_out = n; pf[n++] = (struct pollfd){ m.out, POLLIN, 0 }; }
    if (m.err >= 0) { i_err = n; pf[n++] = (struct pollfd){ m.err, POLLIN, 0 }; }
    if (m.pty >= 0) { i_pty = n; pf[n++] = (struct pollfd){ m.pty, POLLIN, 0 }; }
    if (serving) {
        if (m.ctl >= 0) { i_ctl = n; pf[n++] = (struct pollfd){ m.ctl, POLLIN, 0 }; }
        i_listen = n; pf[n++] = (struct pollfd){ m.listen_fd, POLLIN, 0 };
        i_sig = n; pf[n++] = (struct pollfd){ m.sig_fd, POLLIN, 0 };
        if (m.in_w >= 0 && m.stdin_buf.len) { i_in = n; pf[n++] = (struct pollfd){ m.in_w, POLLOUT, 0 }; }
        i_cl = n;
        for (int k = 0; k < m.nclients; k++)
            pf[n++] = (struct pollfd){ m.clients[k].fd, POLLIN, 0 };
    }
    int r = poll(pf, (nfds_t)n, timeout_ms);
    if (r <= 0)
        return;
    if (i_out >= 0 && pf[i_out].revents) output_read(&m.out, F_STDOUT);
    if (i_err >= 0 && pf[i_err].revents) output_read(&m.err, F_STDERR);
    if (i_pty >= 0 && pf[i_pty].revents) output_read(&m.pty, F_STDOUT);
    if (!serving)
        return;
    if (i_ctl >= 0 && pf[i_ctl].revents) ctl_read();
    if (i_in >= 0 && pf[i_in].revents) flush_stdin();
    if (pf[i_sig].revents) {
        struct signalfd_siginfo si;
        while (read(m.sig_fd, &si, sizeof(si)) == sizeof(si)) {}
        reap();
    }
    /* Clients last, from the end: dropping one moves the last into its slot. */
    int ncl = n - i_cl;
    for (int k = ncl - 1; k >= 0; k--) {
        if (pf[i_cl + k].revents && k < m.nclients && !client_read(&m.clients[k]))
            drop_client(k);
    }
    if (pf[i_listen].revents) accept_client();
}

/* The "oom_kill N" count of the memory cgroup: -1 if unknown. */
static long oom_kills(void) {
    if (!m.oom_events)
        return -1;
    FILE *f = fopen(m.oom_events, "re");
    if (!f)
        return -1;
    char line[256];
    long n = -1;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, "oom_kill ", 9) == 0) {
            n = strtol(line + 9, NULL, 10);
            break;
        }
    }
    fclose(f);
    return n;
}

static void write_exit(void) {
    int code = WIFEXITED(m.status) ? WEXITSTATUS(m.status) : 128 + WTERMSIG(m.status);
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct buf b = { 0 };
    char head[160];
    long oom = oom_kills();
    int n = snprintf(head, sizeof(head), "{\"exit_code\": %d, \"finished_at\": %ld.%06ld, %s\"error\": \"",
                     code, (long)tv.tv_sec, (long)tv.tv_usec,
                     oom < 0 ? "" : oom > 0 ? "\"oom_killed\": true, " : "\"oom_killed\": false, ");
    buf_add(&b, head, (size_t)n);
    if (m.exec_error)
        json_escape(&b, (const unsigned char *)m.exec_error, strlen(m.exec_error));
    buf_add(&b, "\"}", 2);

    /* Atomically, so a reader never sees half of it. */
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp", m.exit_path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) {
        int ok = write_all(fd, b.p, b.len);
        close(fd);
        if (ok)
            rename(tmp, m.exit_path);
    }
    broadcast(F_EXIT, b.p, b.len);
    buf_free(&b);
}

/* The rootfs mount and the cgroup directories. A cgroup that still has processes (--pid host
 * leaves them) refuses rmdir with EBUSY, as it does for a moment after its last task has left:
 * retried for up to 50 ms in all, then left to the agent, which kills what is left. */
static void teardown(void) {
    /* A plain umount first: nothing should use the rootfs once the init is gone, and a lazy
     * one waits for an RCU grace period here (1.9 ms against 0.7). */
    if (m.rootfs && umount2(m.rootfs, 0) != 0 && errno == EBUSY)
        umount2(m.rootfs, MNT_DETACH);
    int budget = 50;
    for (int i = 0; i < m.ncgroups; i++) {
        while (rmdir(m.cgroups[i]) != 0 && errno == EBUSY && budget-- > 0)
            usleep(1000);
    }
}

static int fd_arg(const char *v) {
    char *end;
    long x = strtol(v, &end, 10);
    if (*end || x < -1 || x > 65535)
        die("bad descriptor %s", v);
    return (int)x;
}

int main(int argc, char **argv) {
    int born[MAX_CLIENTS], nborn = 0;   /* clients attached from the start (--client) */
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--pid")) m.pid = (pid_t)atoi(v);
        else if (!strcmp(k, "--started-at")) m.started_at = strtod(v, NULL);
        else if (!strcmp(k, "--tty")) m.tty = atoi(v);
        else if (!strcmp(k, "--released")) m.released = atoi(v);
        else if (!strcmp(k, "--listen")) m.listen_fd = fd_arg(v);
        else if (!strcmp(k, "--socket")) m.socket_path = v;
        else if (!strcmp(k, "--ctl")) m.ctl = fd_arg(v);
        else if (!strcmp(k, "--stdout")) m.out = fd_arg(v);
        else if (!strcmp(k, "--stderr")) m.err = fd_arg(v);
        else if (!strcmp(k, "--pty")) m.pty = fd_arg(v);
        else if (!strcmp(k, "--stdin")) m.in_w = fd_arg(v);
        else if (!strcmp(k, "--log")) m.log_path = v;
        else if (!strcmp(k, "--log-max-size")) m.log_max_size = strtoll(v, NULL, 10);
        else if (!strcmp(k, "--log-max-file")) m.log_max_file = atoi(v);
        else if (!strcmp(k, "--log-compress")) m.log_compress = atoi(v);
        else if (!strcmp(k, "--log-format")) {
            if (strcmp(v, "json") && strcmp(v, "local"))
                die("--log-format %s: json or local", v);
            if (m.log_attrs.len)
                die("--log-format must come before --log-attr");
            m.log_local = !strcmp(v, "local");
        }
        else if (!strcmp(k, "--log-attr")) log_attr(v);
        else if (!strcmp(k, "--exit")) m.exit_path = v;
        else if (!strcmp(k, "--error")) m.exec_error = *v ? strdup(v) : NULL;
        else if (!strcmp(k, "--rootfs")) m.rootfs = v;
        else if (!strcmp(k, "--oom-events")) m.oom_events = v;
        else if (!strcmp(k, "--cgroup") && m.ncgroups < MAX_CGROUPS) m.cgroups[m.ncgroups++] = v;
        else if (!strcmp(k, "--client") && nborn < MAX_CLIENTS) born[nborn++] = fd_arg(v);
        else die("unknown argument %s", k);
    }
    if (m.log_attrs.len && !m.log_local)
        buf_add(&m.log_attrs, "}", 1);
    if (m.pid <= 0 || m.listen_fd < 0 || !m.socket_path || !m.log_path || !m.exit_path)
        die("usage: dockyard-monitor --pid N --listen FD --socket PATH --log PATH --exit PATH ...");
    m.trace_path = getenv("DOCKYARD_TRACE");
    if (m.trace_path && !*m.trace_path)
        m.trace_path = NULL;

    if (*m.log_path) {
        m.log_fd = open(m.log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
        if (m.log_fd < 0)
            die("open %s: %s", m.log_path, strerror(errno));
        struct stat st;
        if (fstat(m.log_fd, &st) == 0)
            m.log_size = st.st_size;   /* a restart appends to the file it had */
    }
    if (m.log_max_file < 1)
        m.log_max_file = 1;
    for (int i = 1; m.log_fd >= 0 && i < m.log_max_file; i++) {   /* a restarted container's files */
        char p[4096], gz[4096];
        rotated_name(p, sizeof(p), i, 0);
        rotated_name(gz, sizeof(gz), i, 1);
        if (access(p, F_OK) != 0 && access(gz, F_OK) != 0)
            break;
        m.log_rotated = i;
    }
    signal(SIGPIPE, SIG_IGN);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    m.sig_fd = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
    if (m.sig_fd < 0)
        die("signalfd: %s", strerror(errno));
    int fds[] = { m.listen_fd, m.ctl, m.out, m.err, m.pty, m.in_w };
    for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
        if (fds[i] >= 0) {
            fcntl(fds[i], F_SETFD, FD_CLOEXEC);
            fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
        }
    }
    for (int i = 0; i < nborn; i++) {
        if (born[i] >= 0) {
            fcntl(born[i], F_SETFD, FD_CLOEXEC);
            fcntl(born[i], F_SETFL, fcntl(born[i], F_GETFL) | O_NONBLOCK);
            add_client(born[i]);
        }
    }
    if (m.released)
        send_go();
    reap();   /* the init may have exited before we blocked SIGCHLD */
    while (!m.exited) {
        poll_once(5000, 1);
        reap();
    }
    /* An init that failed its execve before we were exec'd has said why on ctl: read it now,
     * for the log and exit.json (the loop above never ran if it was gone at once). */
    while (m.ctl >= 0 && ctl_read()) {}
    trace("exited");

    /* Whatever is still buffered in the pipes belongs in the log. */
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (m.out >= 0 || m.err >= 0 || m.pty >= 0) {
        clock_gettime(CLOCK_MONOTONIC, &t);
        long left = DRAIN_MS - ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000);
        if (left <= 0)
            break;
        poll_once((int)(left < 100 ? left : 100), 0);
    }
    trace("drained");
    /* Unlink first: once exit.json is there, a new run of this container may bind the same path. */
    unlink(m.socket_path);
    write_exit();
    while (m.nclients)
        drop_client(m.nclients - 1);
    reap();
    teardown();
    wait_compress();   /* so the container's rotated files are whole once we are gone */
    trace("monitor: torn down");
    return 0;
}
