/* The seed's multi-process echo server on libuv (libuv's user guide, "Processes",
 * "Sending file descriptors over pipes"): the C anchor of `cargo bench -p brood-cli
 * --bench cluster`.
 *
 * The master listens, accepts each TCP connection and hands it round-robin to a worker
 * with uv_write2 (a one-byte buffer with the handle attached) on the worker's stdin, an
 * IPC pipe; it closes its own copy once the write is done. A worker reads its stdin,
 * accepts each pending TCP handle and echoes it. Workers exit when the master's pipe
 * closes and their connections are done.
 *
 *   multi_echo [-w WORKERS] [-p PORT] [-q]
 *
 * PORT 0 (the default) picks a free port; the master prints `listening on ADDR` on
 * stdout once it accepts. Workers print `Worker PID: Accepted fd N` on stderr per
 * connection, as in the seed; -q leaves that line out (the bench compares `brood
 * cluster`, which logs nothing per connection, with -q).
 *
 * Built by the bench: cc -O2 -o multi_echo multi_echo.c -luv
 */
#include <assert.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

static uv_loop_t *loop;
static int quiet;

/* ---- worker ---------------------------------------------------------------------- */

static uv_pipe_t queue;

static void alloc_buffer(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
    (void)handle;
    buf->base = malloc(suggested);
    buf->len = buf->base ? suggested : 0;
}

static void free_handle(uv_handle_t *handle) { free(handle); }

struct echo_write {
    uv_write_t req;
    char *base;
};

static void echo_written(uv_write_t *req, int status) {
    struct echo_write *w = (struct echo_write *)req;
    (void)status;
    free(w->base);
    free(w);
}

static void echo_read(uv_stream_t *client, ssize_t nread, const uv_buf_t *buf) {
    if (nread > 0) {
        struct echo_write *w = malloc(sizeof *w);
        if (w == NULL) {
            free(buf->base);
            uv_close((uv_handle_t *)client, free_handle);
            return;
        }
        w->base = buf->base;
        uv_buf_t out = uv_buf_init(buf->base, (unsigned int)nread);
        if (uv_write(&w->req, client, &out, 1, echo_written) != 0) {
            free(w->base);
            free(w);
            uv_close((uv_handle_t *)client, free_handle);
        }
        return;
    }
    free(buf->base);
    if (nread < 0) {
        /* EOF or an error: the connection is over. */
        uv_close((uv_handle_t *)client, free_handle);
    }
}

static void on_new_connection(uv_stream_t *q, ssize_t nread, const uv_buf_t *buf) {
    free(buf->base);
    if (nread < 0) {
        if (nread != UV_EOF)
            fprintf(stderr, "Read error %s\n", uv_err_name((int)nread));
        uv_close((uv_handle_t *)q, NULL);
        return;
    }
    uv_pipe_t *pipe = (uv_pipe_t *)q;
    while (uv_pipe_pending_count(pipe) > 0) {
        uv_handle_type pending = uv_pipe_pending_type(pipe);
        assert(pending == UV_TCP);
        (void)pending;
        uv_tcp_t *client = malloc(sizeof *client);
        if (client == NULL)
            abort();
        uv_tcp_init(loop, client);
        if (uv_accept(q, (uv_stream_t *)client) == 0) {
            if (!quiet) {
                uv_os_fd_t fd;
                uv_fileno((const uv_handle_t *)client, &fd);
                fprintf(stderr, "Worker %d: Accepted fd %d\n", getpid(), fd);
            }
            uv_read_start((uv_stream_t *)client, alloc_buffer, echo_read);
        } else {
            uv_close((uv_handle_t *)client, free_handle);
        }
    }
}

static int worker(void) {
    uv_pipe_init(loop, &queue, 1 /* ipc */);
    uv_pipe_open(&queue, 0);
    uv_read_start((uv_stream_t *)&queue, alloc_buffer, on_new_connection);
    return uv_run(loop, UV_RUN_DEFAULT);
}

/* ---- master ---------------------------------------------------------------------- */

struct child_worker {
    uv_process_t req;
    uv_process_options_t options;
    uv_pipe_t pipe;
};

static struct child_worker *workers;
static int child_worker_count;
static int round_robin_counter;
static uv_buf_t dummy_buf;

struct handoff {
    uv_write_t req;
    uv_tcp_t *client;
};

static void close_process_handle(uv_process_t *req, int64_t status, int signal) {
    fprintf(stderr, "Process exited with status %d, signal %d\n", (int)status, signal);
    uv_close((uv_handle_t *)req, NULL);
}

static void handed_off(uv_write_t *req, int status) {
    struct handoff *h = (struct handoff *)req;
    if (status != 0)
        fprintf(stderr, "handoff: %s\n", uv_err_name(status));
    /* The worker has its own copy of the fd now. */
    uv_close((uv_handle_t *)h->client, free_handle);
    free(h);
}

static void on_connection(uv_stream_t *server, int status) {
    if (status < 0) {
        fprintf(stderr, "accept: %s\n", uv_err_name(status));
        return;
    }
    uv_tcp_t *client = malloc(sizeof *client);
    if (client == NULL)
        abort();
    uv_tcp_init(loop, client);
    if (uv_accept(server, (uv_stream_t *)client) != 0) {
        uv_close((uv_handle_t *)client, free_handle);
        return;
    }
    struct handoff *h = malloc(sizeof *h);
    if (h == NULL)
        abort();
    h->client = client;
    struct child_worker *w = &workers[round_robin_counter];
    round_robin_counter = (round_robin_counter + 1) % child_worker_count;
    if (uv_write2(&h->req, (uv_stream_t *)&w->pipe, &dummy_buf, 1, (uv_stream_t *)client,
                  handed_off) != 0) {
        uv_close((uv_handle_t *)client, free_handle);
        free(h);
    }
}

static int setup_workers(const char *self, int count) {
    static char *args[4];
    args[0] = (char *)self;
    args[1] = "worker";
    args[2] = quiet ? "-q" : NULL;
    args[3] = NULL;
    child_worker_count = count;
    workers = calloc((size_t)count, sizeof(struct child_worker));
    if (workers == NULL)
        return UV_ENOMEM;
    for (int i = 0; i < count; i++) {
        struct child_worker *worker = &workers[i];
        uv_pipe_init(loop, &worker->pipe, 1);
        uv_stdio_container_t child_stdio[3];
        child_stdio[0].flags = UV_CREATE_PIPE | UV_READABLE_PIPE;
        child_stdio[0].data.stream = (uv_stream_t *)&worker->pipe;
        child_stdio[1].flags = UV_IGNORE;
        child_stdio[2].flags = UV_INHERIT_FD;
        child_stdio[2].data.fd = 2;
        worker->options.stdio = child_stdio;
        worker->options.stdio_count = 3;
        worker->options.exit_cb = close_process_handle;
        worker->options.file = args[0];
        worker->options.args = args;
        int r = uv_spawn(loop, &worker->req, &worker->options);
        if (r != 0) {
            fprintf(stderr, "spawn: %s\n", uv_strerror(r));
            return r;
        }
        fprintf(stderr, "Started worker %d\n", worker->req.pid);
    }
    return 0;
}

static void usage(void) {
    fprintf(stderr, "usage: multi_echo [-w WORKERS] [-p PORT] [-q]\n");
    exit(2);
}

int main(int argc, char **argv) {
    loop = uv_default_loop();
    int nworkers = 0, port = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "worker") == 0) {
            quiet = i + 1 < argc && strcmp(argv[i + 1], "-q") == 0;
            return worker();
        } else if (strcmp(argv[i], "-q") == 0) {
            quiet = 1;
        } else if (strcmp(argv[i], "-w") == 0 && i + 1 < argc) {
            nworkers = atoi(argv[++i]);
        } else if (strcmp(argv[i], "-p") == 0 && i + 1 < argc) {
            port = atoi(argv[++i]);
        } else {
            usage();
        }
    }
    if (nworkers <= 0) {
        uv_cpu_info_t *info;
        uv_cpu_info(&info, &nworkers);
        uv_free_cpu_info(info, nworkers);
    }
    dummy_buf = uv_buf_init("a", 1);
    /* A worker gone mid-write is an error of that write, not the end of the master. */
    signal(SIGPIPE, SIG_IGN);
    if (setup_workers(argv[0], nworkers) != 0)
        return 1;

    uv_tcp_t server;
    uv_tcp_init(loop, &server);
    struct sockaddr_in bind_addr;
    uv_ip4_addr("127.0.0.1", port, &bind_addr);
    int r = uv_tcp_bind(&server, (const struct sockaddr *)&bind_addr, 0);
    if (r == 0)
        r = uv_listen((uv_stream_t *)&server, 1024, on_connection);
    if (r != 0) {
        fprintf(stderr, "listen: %s\n", uv_strerror(r));
        return 1;
    }
    struct sockaddr_in name;
    int len = sizeof name;
    uv_tcp_getsockname(&server, (struct sockaddr *)&name, &len);
    char ip[64];
    uv_ip4_name(&name, ip, sizeof ip);
    printf("listening on %s:%d\n", ip, ntohs(name.sin_port));
    fflush(stdout);
    return uv_run(loop, UV_RUN_DEFAULT);
}
