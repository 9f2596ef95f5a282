/*
 * echo_epoll: the minimal C echo server that sets the floor for the benchmark.
 *
 *   echo_epoll tcp|udp PORT
 *
 * Listens on 127.0.0.1:PORT (0 = let the kernel pick) and prints the bound port as the
 * first line of stdout, flushed, so the driver never has to guess a free port.
 *
 * TCP: one thread, level-triggered epoll, non-blocking sockets.  Each connection echoes
 * whatever arrives; when the peer does not take the whole echo (send() returns short),
 * the rest is kept and the connection waits for EPOLLOUT instead of reading more, so a
 * slow reader cannot make the server buffer without bound.
 * UDP: a blocking recvfrom()/sendto() loop, which is the cheapest datagram echo there is.
 *
 * It runs until killed (the driver sends SIGTERM to its process group).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE 65536
#define MAX_EVENTS 1024

struct conn {
    size_t len; /* bytes in buf still to send */
    size_t off; /* first unsent byte */
    char buf[BUF_SIZE];
};

static struct conn **conns; /* indexed by fd */
static int conns_cap;

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int bind_socket(int type, int port) {
    int fd = socket(AF_INET, type, 0);
    if (fd < 0) die("socket");
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind");
    socklen_t alen = sizeof addr;
    if (getsockname(fd, (struct sockaddr *)&addr, &alen) < 0) die("getsockname");
    printf("%d\n", ntohs(addr.sin_port));
    fflush(stdout);
    return fd;
}

static void close_conn(int ep, int fd) {
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
    free(conns[fd]);
    conns[fd] = NULL;
}

static void set_interest(int ep, int fd, unsigned events) {
    struct epoll_event ev = {.events = events, .data.fd = fd};
    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
}

/* Send what is pending; returns 0 when drained, 1 when the socket is full, -1 on error. */
static int flush_conn(struct conn *c, int fd) {
    while (c->off < c->len) {
        ssize_t n = send(fd, c->buf + c->off, c->len - c->off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            return (errno == EAGAIN || errno == EWOULDBLOCK) ? 1 : -1;
        }
        c->off += (size_t)n;
    }
    c->off = c->len = 0;
    return 0;
}

static void on_readable(int ep, int fd) {
    struct conn *c = conns[fd];
    for (;;) {
        ssize_t n = recv(fd, c->buf, BUF_SIZE, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            close_conn(ep, fd);
            return;
        }
        if (n < 0) {
            if (errno == EINTR) continue;
            return; /* drained */
        }
        c->len = (size_t)n;
        c->off = 0;
        int r = flush_conn(c, fd);
        if (r < 0) {
            close_conn(ep, fd);
            return;
        }
        if (r > 0) {
            set_interest(ep, fd, EPOLLOUT);
            return;
        }
        if (n < BUF_SIZE) return; /* short read: the socket is very likely empty */
    }
}

static void on_writable(int ep, int fd) {
    int r = flush_conn(conns[fd], fd);
    if (r < 0)
        close_conn(ep, fd);
    else if (r == 0)
        set_interest(ep, fd, EPOLLIN);
}

static void on_acceptable(int ep, int lfd) {
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) perror("accept4");
            return;
        }
        if (fd >= conns_cap) { /* cannot happen below RLIMIT_NOFILE; be safe */
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conns[fd] = calloc(1, sizeof(struct conn));
        if (!conns[fd]) die("calloc");
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    }
}

static int serve_tcp(int port) {
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    conns_cap = (int)rl.rlim_cur;
    conns = calloc((size_t)conns_cap, sizeof *conns);
    if (!conns) die("calloc");

    int lfd = bind_socket(SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, port);
    if (listen(lfd, SOMAXCONN) < 0) die("listen");
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) < 0) die("epoll_ctl");

    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(ep, events, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd)
                on_acceptable(ep, lfd);
            else if (!conns[fd])
                continue; /* closed earlier in this batch */
            else if (events[i].events & EPOLLOUT)
                on_writable(ep, fd);
            else
                on_readable(ep, fd); /* EPOLLIN, EPOLLHUP, EPOLLERR: recv() tells which */
        }
    }
}

static int serve_udp(int port) {
    int fd = bind_socket(SOCK_DGRAM | SOCK_CLOEXEC, port);
    static char buf[BUF_SIZE];
    for (;;) {
        struct sockaddr_storage peer;
        socklen_t plen = sizeof peer;
        ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&peer, &plen);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("recvfrom");
        }
        /* A full socket buffer drops the reply, as a datagram network would. */
        sendto(fd, buf, (size_t)n, MSG_DONTWAIT, (struct sockaddr *)&peer, plen);
    }
}

int main(int argc, char **argv) {
    if (argc != 3 || (strcmp(argv[1], "tcp") && strcmp(argv[1], "udp"))) {
        fprintf(stderr, "usage: %s tcp|udp PORT\n", argv[0]);
        return 2;
    }
    raise_nofile();
    int port = atoi(argv[2]);
    return strcmp(argv[1], "tcp") == 0 ? serve_tcp(port) : serve_udp(port);
}
