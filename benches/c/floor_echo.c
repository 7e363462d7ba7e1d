/* The floor of `cargo bench -p brood-cli --bench cluster`: the least work a server can do
 * per echoed connection on Linux, so the bench can say how much of a handoff's cost any
 * design can remove.
 *
 * One process, no handoff, no workers, no allocation per connection: a level-triggered
 * epoll loop that accepts until EAGAIN, registers each connection, echoes what one read
 * gives (64-byte exchanges fit in one read and one write), and closes on EOF or error
 * (closing the only fd also takes it out of the epoll set). Per connection that is
 * accept4, epoll_ctl, read, write, read (EOF) and close, plus its share of epoll_wait.
 *
 *   floor_echo [PORT]
 *
 * PORT 0 (the default) picks a free port; prints `listening on ADDR` on stdout.
 *
 * Built by the bench: cc -O2 -o floor_echo floor_echo.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 0;
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    socklen_t len = sizeof addr;
    if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr) != 1 ||
        bind(lfd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(lfd, 511) != 0 ||
        getsockname(lfd, (struct sockaddr *)&addr, &len) != 0) {
        perror("floor_echo: listen");
        return 1;
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) != 0) {
        perror("floor_echo: epoll");
        return 1;
    }
    printf("listening on 127.0.0.1:%d\n", ntohs(addr.sin_port));
    fflush(stdout);

    static struct epoll_event events[256];
    static char buf[65536];
    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        if (n < 0 && errno != EINTR) {
            perror("floor_echo: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd) {
                int c;
                while ((c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev) != 0)
                        close(c);
                }
                continue;
            }
            ssize_t got = read(fd, buf, sizeof buf);
            if (got > 0) {
                if (write(fd, buf, (size_t)got) != got)
                    close(fd);
            } else if (got == 0 || errno != EAGAIN) {
                close(fd);
            }
        }
    }
}
