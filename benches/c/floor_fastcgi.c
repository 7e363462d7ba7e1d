/* The floor of `cargo bench --features cgi --bench fastcgi`: the least work a FastCGI
 * front for CGI programs can do per request on Linux, so the bench can say how much of
 * fcgiwrap's cost any design can remove.
 *
 * N processes (one per core by default) share one listening socket; each is a
 * single-threaded, level-triggered epoll loop with no allocation per request. Per request:
 * accept4, read the records, posix_spawn (glibc: clone(CLONE_VM|CLONE_VFORK)) the
 * SCRIPT_FILENAME with the params as its environment, stdin /dev/null (opened once), stdout
 * one pipe, stderr inherited; relay what the pipe gives as FCGI_STDOUT records, then the
 * empty record and END_REQUEST, close. SIGCHLD is ignored, so the kernel reaps the children
 * and no wait is made.
 *
 * It does less than any real front must: no stderr pipe, no parsing of the CGI headers,
 * no exit status, no checks of the script path, no timeout, no limits, no log, no request
 * body (FCGI_STDIN is read and dropped). It is a bound, not a server.
 *
 *   floor_fastcgi SOCKET_PATH [PROCESSES]
 *
 * Prints `listening` on stdout once the socket accepts connections.
 *
 * Built by the bench: cc -O2 -o floor_fastcgi floor_fastcgi.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_CONNS 1024
#define INBUF 16384
#define MAX_ENV 128

struct conn {
    int fd;      /* the connection, -1 when the slot is free */
    int out;     /* the script's stdout, -1 before the spawn and after EOF */
    int id;      /* the FastCGI request id */
    size_t have; /* bytes in in[] */
    int params_done, stdin_done, spawned;
    char in[INBUF];
    char env[INBUF];
    size_t env_len;
};

static struct conn conns[MAX_CONNS];
static int ep, lfd, devnull;
/* The script starts with SIGCHLD and SIGPIPE at their defaults, not ignored as here. */
static posix_spawnattr_t attr;

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
    close(c->fd);
    c->fd = -1;
    c->out = -1;
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
    int p[2];
    if (!script || pipe2(p, O_CLOEXEC) != 0) {
        finish(c);
        return;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, devnull, 0);
    posix_spawn_file_actions_adddup2(&fa, p[1], 1);
    char *argv[] = {script, NULL};
    pid_t pid;
    int err = posix_spawn(&pid, script, &fa, &attr, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    close(p[1]);
    if (err != 0) {
        close(p[0]);
        finish(c);
        return;
    }
    c->out = p[0];
    c->spawned = 1;
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (unsigned)slot | 0x80000000u};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->out, &ev);
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
    finish(c);
}

static void loop(void) {
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLEXCLUSIVE, .data.u32 = 0x7fffffffu};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) != 0) {
        perror("floor_fastcgi: epoll");
        exit(1);
    }
    for (int i = 0; i < MAX_CONNS; i++)
        conns[i].fd = conns[i].out = -1;
    static struct epoll_event events[256];
    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        for (int i = 0; i < n; i++) {
            unsigned u = events[i].data.u32;
            if (u == 0x7fffffffu) {
                int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd < 0)
                    continue;
                int slot = 0;
                while (slot < MAX_CONNS && conns[slot].fd >= 0)
                    slot++;
                if (slot == MAX_CONNS) {
                    close(fd);
                    continue;
                }
                struct conn *c = &conns[slot];
                c->fd = fd;
                c->out = -1;
                c->have = c->env_len = 0;
                c->params_done = c->stdin_done = c->spawned = 0;
                struct epoll_event cev = {.events = EPOLLIN, .data.u32 = (unsigned)slot};
                epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
            } else if (u & 0x80000000u) {
                struct conn *c = &conns[u & 0x7fffffffu];
                if (c->out >= 0)
                    on_output(c);
            } else if (conns[u].fd >= 0 && !conns[u].spawned) {
                on_input(&conns[u], (int)u);
            }
        }
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: floor_fastcgi SOCKET_PATH [PROCESSES]\n");
        return 2;
    }
    int procs = argc > 2 ? atoi(argv[2]) : (int)sysconf(_SC_NPROCESSORS_ONLN);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strncpy(addr.sun_path, argv[1], sizeof addr.sun_path - 1);
    unlink(argv[1]);
    sigset_t def;
    sigemptyset(&def);
    sigaddset(&def, SIGCHLD);
    sigaddset(&def, SIGPIPE);
    posix_spawnattr_init(&attr);
    posix_spawnattr_setsigdefault(&attr, &def);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF);
    signal(SIGCHLD, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
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
