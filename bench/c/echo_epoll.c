/*
 * echo_epoll: the minimal C echo server that sets the floor for the benchmark.
 *
 *   echo_epoll tcp|udp PORT [busy]
 *
 * Listens on 127.0.0.1:PORT (0 = let the kernel pick) and prints the bound port as the
 * first line of stdout, flushed, so the driver never has to guess a free port.
 *
 * TCP: one thread, level-triggered epoll, non-blocking sockets.  Each connection echoes
 * whatever arrives, read into one buffer shared by all connections; only when the peer
 * does not take the whole echo (send() returns short) is the rest copied to a buffer of
 * the connection's own, which then waits for EPOLLOUT instead of reading more, so a slow
 * reader cannot make the server buffer without bound.  An idle connection costs 25 bytes
 * here (plus the kernel's socket), which makes this the floor of the memory table too.
 * UDP: a blocking recvfrom()/sendto() loop, which is the cheapest datagram echo there is.
 *
 * "busy" never sleeps (epoll_wait with timeout 0, non-blocking recvfrom): its CPU time
 * is then meaningless, but it never pays for being woken up, which in a virtual machine
 * can cost more than the echo itself.  The driver uses it to measure how fast the load
 * generator can go (the sanity line), not in the tables.
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
    char *pending; /* NULL, or the part of an echo the peer has not taken yet */
    size_t len, off;
};

static struct conn *conns; /* indexed by fd; the listening socket's entry is unused */
static char *is_open;
static int conns_cap;
static int busy; /* 1: spin instead of sleeping */
static char buf[BUF_SIZE];

static _Noreturn void die(const char *what) {
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
    return fd;
}

/* Print the bound port, once the socket can take clients (after listen() for TCP). */
static void announce(int fd) {
    struct sockaddr_in addr;
    socklen_t alen = sizeof addr;
    if (getsockname(fd, (struct sockaddr *)&addr, &alen) < 0) die("getsockname");
    printf("%d\n", ntohs(addr.sin_port));
    fflush(stdout);
}

static void close_conn(int ep, int fd) {
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
    free(conns[fd].pending);
    conns[fd] = (struct conn){0};
    is_open[fd] = 0;
}

static void set_interest(int ep, int fd, unsigned events) {
    struct epoll_event ev = {.events = events, .data.fd = fd};
    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
}

/* Send data[*off..len); returns 0 when all is sent, 1 when the socket is full, -1 on error. */
static int send_all(int fd, const char *data, size_t *off, size_t len) {
    while (*off < len) {
        ssize_t n = send(fd, data + *off, len - *off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            return (errno == EAGAIN || errno == EWOULDBLOCK) ? 1 : -1;
        }
        *off += (size_t)n;
    }
    return 0;
}

static void on_readable(int ep, int fd) {
    for (;;) {
        ssize_t n = recv(fd, buf, BUF_SIZE, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return; /* drained */
        if (n <= 0) {
            close_conn(ep, fd);
            return;
        }
        size_t off = 0;
        int r = send_all(fd, buf, &off, (size_t)n);
        if (r < 0) {
            close_conn(ep, fd);
            return;
        }
        if (r > 0) { /* keep the rest and wait until the peer reads */
            struct conn *c = &conns[fd];
            c->len = (size_t)n - off;
            c->off = 0;
            c->pending = malloc(c->len);
            if (!c->pending) die("malloc");
            memcpy(c->pending, buf + off, c->len);
            set_interest(ep, fd, EPOLLOUT);
            return;
        }
        if (n < BUF_SIZE) return; /* short read: the socket is very likely empty */
    }
}

static void on_writable(int ep, int fd) {
    struct conn *c = &conns[fd];
    int r = send_all(fd, c->pending, &c->off, c->len);
    if (r < 0) {
        close_conn(ep, fd);
    } else if (r == 0) {
        free(c->pending);
        *c = (struct conn){0};
        set_interest(ep, fd, EPOLLIN);
    }
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
        is_open[fd] = 1;
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    }
}

static _Noreturn void serve_tcp(int port) {
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    conns_cap = (int)rl.rlim_cur;
    conns = calloc((size_t)conns_cap, sizeof *conns);
    is_open = calloc((size_t)conns_cap, 1);
    if (!conns || !is_open) die("calloc");

    int lfd = bind_socket(SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, port);
    if (listen(lfd, SOMAXCONN) < 0) die("listen");
    announce(lfd);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) < 0) die("epoll_ctl");

    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(ep, events, MAX_EVENTS, busy ? 0 : -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd)
                on_acceptable(ep, lfd);
            else if (!is_open[fd])
                continue; /* closed earlier in this batch */
            else if (events[i].events & EPOLLOUT)
                on_writable(ep, fd);
            else
                on_readable(ep, fd); /* EPOLLIN, EPOLLHUP, EPOLLERR: recv() tells which */
        }
    }
}

static _Noreturn void serve_udp(int port) {
    int fd = bind_socket(SOCK_DGRAM | SOCK_CLOEXEC, port);
    announce(fd);
    for (;;) {
        struct sockaddr_storage peer;
        socklen_t plen = sizeof peer;
        ssize_t n = recvfrom(fd, buf, sizeof buf, busy ? MSG_DONTWAIT : 0,
                             (struct sockaddr *)&peer, &plen);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
            die("recvfrom");
        }
        /* A full socket buffer drops the reply, as a datagram network would. */
        sendto(fd, buf, (size_t)n, MSG_DONTWAIT, (struct sockaddr *)&peer, plen);
    }
}

int main(int argc, char **argv) {
    if (argc < 3 || argc > 4 || (strcmp(argv[1], "tcp") && strcmp(argv[1], "udp")) ||
        (argc == 4 && strcmp(argv[3], "busy"))) {
        fprintf(stderr, "usage: %s tcp|udp PORT [busy]\n", argv[0]);
        return 2;
    }
    raise_nofile();
    int port = atoi(argv[2]);
    busy = argc == 4;
    if (strcmp(argv[1], "tcp") == 0) serve_tcp(port);
    serve_udp(port);
}
