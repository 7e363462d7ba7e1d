/* The floor of `cargo bench --features cgi --bench fastcgi`: the least work a FastCGI
 * front for CGI programs can do per request on Linux, so the bench can say how much of
 * fcgiwrap's cost any design can remove.
 *
 * N processes (one per core by default) share one listening socket; each is a
 * single-threaded, level-triggered epoll loop with no allocation per request. Per request:
 * accept4, read the records, vfork and exec the SCRIPT_FILENAME with the params as its
 * environment, stdin /dev/null (opened once), stdout one pipe, stderr inherited; relay what
 * the pipe gives as FCGI_STDOUT records, then the empty record and END_REQUEST, close.
 * SIGCHLD is ignored, so the kernel reaps the children and no wait is made. The child is
 * written here rather than taken from glibc's posix_spawn, which between its clone and the
 * exec queries and resets every signal's handler (about 115 rt_sigaction calls), maps a
 * stack and allocates for its file actions: this process has no handlers, so its child
 * needs only its dup2s, SIGPIPE and SIGCHLD back to default (with duties: SIGPIPE, its
 * group and the mask) and the exec.
 *
 * It does less than any real front must: no stderr pipe, no parsing of the CGI headers,
 * no exit status, no checks of the script path, no timeout, no limits, no log, no request
 * body (FCGI_STDIN is read and dropped). It is a bound, not a server.
 *
 * With `duties` as third argument it also does, as cheaply as C allows, the per-request
 * work issue 19 asks of any front (so the bench can say what the duties themselves cost):
 * the script must be a regular executable file (one stat); the script runs in a process
 * group of its own; its stderr is a second pipe, read to its end (where a server would log
 * it), past the end of the response if need be; the first output is scanned for the end of
 * the CGI header block and a Status line; every child is reaped through one signalfd for
 * SIGCHLD (waitpid(-1, WNOHANG) until none), its exit status read; a deadline per request is
 * checked once a second, and when it passes what is left of the script's group is killed
 * (as brood and lighttpd do, also after the script itself has ended: the group id stays
 * its own while any member lives) and the request's fds closed; and a connection
 * the web server closes while its script runs ends the script's group. Still none of: a
 * body to the script, header rewriting, limits, a log; a write the socket takes only in
 * part ends the response (enough for the bench's 64 KiB, not for a long stream).
 *
 *   floor_fastcgi SOCKET_PATH [PROCESSES [duties]]
 *
 * Prints `listening` on stdout once the socket accepts connections.
 *
 * Built by the bench: cc -O2 -o floor_fastcgi floor_fastcgi.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 1024 /* a power of two: a tag's slot is its low bits */
#define INBUF 16384
#define MAX_ENV 128
/* epoll tags (the low 32 bits): a connection is its slot; these bits mark its pipes. The
 * high 32 bits carry the slot's generation, so an event that was already waiting for a
 * connection's fds is dropped once the slot serves another connection (its fd numbers
 * may be the new connection's by then, and a read of a pipe with no data would block). */
#define TAG_OUT 0x80000000u
#define TAG_ERR 0x40000000u
#define TAG_LISTEN 0x3fffffffu
#define TAG_SIGCHLD 0x3ffffffeu
/* Seconds a request may take (duties mode). */
#ifndef TIMEOUT_S
#define TIMEOUT_S 60
#endif

struct conn {
    int fd;      /* the connection, -1 when the slot is free */
    int out;     /* the script's stdout, -1 before the spawn and after EOF */
    int err;     /* its stderr (duties mode), -1 when not open */
    int headers; /* the end of the header block was seen (duties mode) */
    int id;      /* the FastCGI request id */
    unsigned gen; /* counts the connections this slot has served */
    size_t have; /* bytes in in[] */
    int params_done, stdin_done, spawned;
    pid_t pid; /* the script until it is reaped, else 0 (duties mode) */
    pid_t pgid; /* its group, which may outlive it (duties mode) */
    time_t deadline; /* when the request is ended (duties mode) */
    char in[INBUF];
    char env[INBUF];
    size_t env_len;
};

static struct conn conns[MAX_CONNS];
static int ep, lfd, devnull, duties, sfd = -1;
/* The children not yet reaped, and the request each runs for (duties mode). */
static struct kid {
    pid_t pid;
    int slot;
    unsigned gen;
} kids[MAX_CONNS];
/* The script starts with SIGCHLD and SIGPIPE at their defaults and no signal blocked. */
static sigset_t no_signals;

static uint64_t tag(const struct conn *c, unsigned u) {
    return (uint64_t)c->gen << 32 | u;
}

static void put_header(unsigned char *h, int type, int id, size_t len) {
    h[0] = 1;
    h[1] = (unsigned char)type;
    h[2] = (unsigned char)(id >> 8);
    h[3] = (unsigned char)id;
    h[4] = (unsigned char)(len >> 8);
    h[5] = (unsigned char)len;
    h[6] = 0;
    h[7] = 0;
}

static void finish(struct conn *c) {
    if (c->out >= 0)
        close(c->out);
    if (c->err >= 0)
        close(c->err);
    close(c->fd);
    c->fd = c->out = c->err = -1;
}

static time_t now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &t);
    return t.tv_sec;
}

/* Duties: reaps every child that has ended, reading its status. */
static void reap(void) {
    /* SIGCHLD is a standard signal: at most one is pending, so one read takes it. */
    struct signalfd_siginfo si;
    (void)!read(sfd, &si, sizeof si);
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
        for (int i = 0; i < MAX_CONNS; i++)
            if (kids[i].pid == pid) {
                kids[i].pid = 0;
                struct conn *c = &conns[kids[i].slot];
                if (c->gen == kids[i].gen)
                    c->pid = 0;
                break;
            }
}

/* Duties: ends every request past its deadline: what is left of its script's group
 * (whatever still holds the pipes) and its fds. */
static void sweep(time_t now) {
    for (int i = 0; i < MAX_CONNS; i++) {
        struct conn *c = &conns[i];
        if ((c->fd >= 0 || c->err >= 0) && c->spawned && c->deadline < now) {
            kill(-c->pgid, SIGKILL);
            finish(c);
        }
    }
}

/* Reads one length of a FastCGI name-value pair; 0 when the bytes run out. */
static int pair_len(const unsigned char **p, const unsigned char *end, size_t *len) {
    if (*p >= end)
        return 0;
    if (**p < 128) {
        *len = *(*p)++;
        return 1;
    }
    if (end - *p < 4)
        return 0;
    *len = ((size_t)((*p)[0] & 0x7f) << 24) | ((size_t)(*p)[1] << 16) | ((size_t)(*p)[2] << 8) |
           (*p)[3];
    *p += 4;
    return 1;
}

static void add_params(struct conn *c, const unsigned char *p, const unsigned char *end) {
    size_t nl, vl;
    while (pair_len(&p, end, &nl) && pair_len(&p, end, &vl) && (size_t)(end - p) >= nl + vl) {
        if (c->env_len + nl + vl + 2 > INBUF)
            return;
        memcpy(c->env + c->env_len, p, nl);
        c->env[c->env_len + nl] = '=';
        memcpy(c->env + c->env_len + nl + 1, p + nl, vl);
        c->env_len += nl + vl + 1;
        c->env[c->env_len++] = 0;
        p += nl + vl;
    }
}

static void spawn(struct conn *c, int slot) {
    char *envp[MAX_ENV], *script = NULL;
    int n = 0;
    for (size_t i = 0; i < c->env_len && n < MAX_ENV - 1; i += strlen(c->env + i) + 1) {
        envp[n++] = c->env + i;
        if (strncmp(c->env + i, "SCRIPT_FILENAME=", 16) == 0)
            script = c->env + i + 16;
    }
    envp[n] = NULL;
    int p[2], e[2] = {-1, -1};
    if (!script || pipe2(p, O_CLOEXEC) != 0) {
        finish(c);
        return;
    }
    if (duties) {
        /* The script must be a regular file someone may execute; a server answers 404 or
         * 403 here. */
        struct stat st;
        if (stat(script, &st) != 0 || !S_ISREG(st.st_mode) || !(st.st_mode & 0111) ||
            pipe2(e, O_CLOEXEC) != 0) {
            close(p[0]);
            close(p[1]);
            finish(c);
            return;
        }
    }
    char *argv[] = {script, NULL};
    pid_t pid = vfork();
    if (pid == 0) {
        /* The child, on the suspended parent's memory until the exec: system calls only.
         * This process installs no handlers (SIGPIPE and, bare, SIGCHLD are ignored; with
         * duties SIGCHLD is blocked), so none can run here. */
        if (duties)
            setpgid(0, 0);
        if (dup2(devnull, 0) < 0 || dup2(p[1], 1) < 0 || (duties && dup2(e[1], 2) < 0))
            _exit(127);
        signal(SIGPIPE, SIG_DFL);
        if (duties)
            sigprocmask(SIG_SETMASK, &no_signals, NULL);
        else
            signal(SIGCHLD, SIG_DFL);
        execve(script, argv, envp);
        _exit(127);
    }
    close(p[1]);
    if (duties)
        close(e[1]);
    if (pid < 0) {
        close(p[0]);
        if (duties)
            close(e[0]);
        finish(c);
        return;
    }
    c->out = p[0];
    c->spawned = 1;
    if (duties) {
        c->err = e[0];
        c->headers = 0;
        c->pid = c->pgid = pid;
        c->deadline = now_s() + TIMEOUT_S;
        int k = 0;
        while (k < MAX_CONNS && kids[k].pid != 0)
            k++;
        if (k < MAX_CONNS)
            kids[k] = (struct kid){.pid = pid, .slot = slot, .gen = c->gen};
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = tag(c, (unsigned)slot | TAG_OUT)};
    struct epoll_event eev = {.events = EPOLLIN, .data.u64 = tag(c, (unsigned)slot | TAG_ERR)};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->out, &ev) != 0 ||
        (duties && epoll_ctl(ep, EPOLL_CTL_ADD, c->err, &eev) != 0)) {
        if (duties && c->pid > 0)
            kill(-c->pid, SIGKILL);
        finish(c);
    }
}

/* Duties: the script's stderr, read to its end (a server logs the lines). */
static void on_stderr(struct conn *c) {
    static char buf[4096];
    ssize_t r = read(c->err, buf, sizeof buf);
    if (r > 0 || (r < 0 && errno == EAGAIN))
        return;
    close(c->err);
    c->err = -1;
}

/* Duties: the end of the CGI header block in the first output (a line that is empty or
 * only "\r"), and its Status line. Walks the header lines only, never the body. */
static void scan_headers(struct conn *c, const char *b, size_t n) {
    const char *p = b, *end = b + n;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl)
            return;
        size_t len = (size_t)(nl - p);
        if (len == 0 || (len == 1 && p[0] == '\r')) {
            c->headers = 1;
            return;
        }
        if (len > 7 && strncasecmp(p, "Status:", 7) == 0)
            (void)atoi(p + 7);
        p = nl + 1;
    }
}

static void on_input(struct conn *c, int slot) {
    ssize_t r = read(c->fd, c->in + c->have, INBUF - c->have);
    if (r <= 0) {
        if (r == 0 || errno != EAGAIN)
            finish(c);
        return;
    }
    c->have += (size_t)r;
    size_t at = 0;
    while (c->have - at >= 8) {
        const unsigned char *h = (const unsigned char *)c->in + at;
        size_t len = ((size_t)h[4] << 8) | h[5], rec = 8 + len + h[6];
        if (c->have - at < rec)
            break;
        switch (h[1]) {
        case 1: /* BEGIN_REQUEST */
            c->id = (h[2] << 8) | h[3];
            break;
        case 4: /* PARAMS */
            if (len == 0)
                c->params_done = 1;
            else
                add_params(c, h + 8, h + 8 + len);
            break;
        case 5: /* STDIN */
            if (len == 0)
                c->stdin_done = 1;
            break;
        }
        at += rec;
    }
    memmove(c->in, c->in + at, c->have - at);
    c->have -= at;
    if (c->params_done && c->stdin_done && !c->spawned)
        spawn(c, slot);
    else if (c->have == INBUF)
        finish(c);
}

static void on_output(struct conn *c) {
    static unsigned char buf[8 + 65535];
    ssize_t r = read(c->out, buf + 8, 65535);
    if (r > 0 && duties && !c->headers)
        scan_headers(c, (const char *)buf + 8, (size_t)r);
    if (r > 0) {
        put_header(buf, 6, c->id, (size_t)r);
        if (write(c->fd, buf, 8 + (size_t)r) != 8 + r)
            finish(c);
        return;
    }
    if (r < 0 && errno == EAGAIN)
        return;
    unsigned char end[24] = {0};
    put_header(end, 6, c->id, 0);
    put_header(end + 8, 3, c->id, 8);
    (void)!write(c->fd, end, sizeof end);
    /* The response is over; stderr (duties) is read on to its end, and the slot stays
     * taken until then. */
    int err = c->err;
    c->err = -1;
    finish(c);
    c->err = err;
}

/* Input on a connection whose script runs: the web server closed it (or aborted), which
 * ends the script's group (duties); other records are dropped. */
static void on_late_input(struct conn *c) {
    char buf[512];
    ssize_t r = read(c->fd, buf, sizeof buf);
    if (r > 0 || (r < 0 && errno == EAGAIN))
        return;
    if (duties && c->pid > 0)
        kill(-c->pid, SIGTERM);
    finish(c);
}

static void loop(void) {
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLEXCLUSIVE, .data.u64 = TAG_LISTEN};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) != 0) {
        perror("floor_fastcgi: epoll");
        exit(1);
    }
    if (duties) {
        /* Each process reaps its own children: its own signalfd, made after the fork. */
        sigset_t chld;
        sigemptyset(&chld);
        sigaddset(&chld, SIGCHLD);
        sfd = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
        struct epoll_event sev = {.events = EPOLLIN, .data.u64 = TAG_SIGCHLD};
        if (sfd < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &sev) != 0) {
            perror("floor_fastcgi: signalfd");
            exit(1);
        }
    }
    for (int i = 0; i < MAX_CONNS; i++)
        conns[i].fd = conns[i].out = conns[i].err = -1;
    static struct epoll_event events[256];
    time_t swept = now_s();
    for (;;) {
        int n = epoll_wait(ep, events, 256, duties ? 1000 : -1);
        if (duties) {
            time_t now = now_s();
            if (now != swept) {
                sweep(now);
                swept = now;
            }
        }
        for (int i = 0; i < n; i++) {
            uint64_t data = events[i].data.u64;
            unsigned u = (unsigned)data, gen = (unsigned)(data >> 32);
            struct conn *c = &conns[u & (MAX_CONNS - 1)];
            if (u != TAG_LISTEN && u != TAG_SIGCHLD && c->gen != gen)
                continue; /* for a connection that is over */
            if (u == TAG_SIGCHLD) {
                reap();
            } else if (u == TAG_LISTEN) {
                int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd < 0)
                    continue;
                int slot = 0;
                while (slot < MAX_CONNS && (conns[slot].fd >= 0 || conns[slot].err >= 0))
                    slot++;
                if (slot == MAX_CONNS) {
                    close(fd);
                    continue;
                }
                struct conn *nc = &conns[slot];
                nc->fd = fd;
                nc->gen++;
                nc->out = -1;
                nc->have = nc->env_len = 0;
                nc->params_done = nc->stdin_done = nc->spawned = 0;
                nc->pid = 0;
                struct epoll_event cev = {.events = EPOLLIN, .data.u64 = tag(nc, (unsigned)slot)};
                if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev) != 0)
                    finish(nc);
            } else if (u & TAG_OUT) {
                if (c->out >= 0)
                    on_output(c);
            } else if (u & TAG_ERR) {
                if (c->err >= 0)
                    on_stderr(c);
            } else if (c->fd >= 0 && !c->spawned) {
                on_input(c, (int)u);
            } else if (c->fd >= 0) {
                on_late_input(c);
            }
        }
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: floor_fastcgi SOCKET_PATH [PROCESSES [duties]]\n");
        return 2;
    }
    int procs = argc > 2 ? atoi(argv[2]) : 0;
    if (procs <= 0)
        procs = (int)sysconf(_SC_NPROCESSORS_ONLN);
    duties = argc > 3 && strcmp(argv[3], "duties") == 0;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strncpy(addr.sun_path, argv[1], sizeof addr.sun_path - 1);
    unlink(argv[1]);
    sigemptyset(&no_signals);
    signal(SIGPIPE, SIG_IGN);
    if (duties) {
        /* SIGCHLD blocked for the signalfd (the child unblocks it). */
        sigset_t chld;
        sigemptyset(&chld);
        sigaddset(&chld, SIGCHLD);
        sigprocmask(SIG_BLOCK, &chld, NULL);
    } else {
        signal(SIGCHLD, SIG_IGN);
    }
    lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (lfd < 0 || devnull < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof addr) != 0 ||
        listen(lfd, 511) != 0) {
        perror("floor_fastcgi: listen");
        return 1;
    }
    printf("listening\n");
    fflush(stdout);
    for (int i = 1; i < procs; i++)
        if (fork() == 0)
            loop();
    loop();
}
