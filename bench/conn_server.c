/*
 * conn_server: accept-and-close TCP server for bench/datapath.py.
 *
 * Listens on 0.0.0.0:PORT (backlog 4096) and runs WORKERS processes that share the listening
 * socket; each loops on a blocking accept(), writes one byte and closes (a FIN; the client
 * answers with an RST, so no TIME_WAIT is left on either side).  Prints "ready" once
 * listening.  Every process dies with its parent (PR_SET_PDEATHSIG) or on SIGTERM.
 *
 * Usage: conn_server PORT [WORKERS]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static void serve(int lfd)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE)
                continue;
            perror("accept4");
            exit(2);
        }
        (void)!send(fd, "x", 1, MSG_DONTWAIT | MSG_NOSIGNAL);
        close(fd);
    }
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s PORT [WORKERS]\n", argv[0]);
        return 2;
    }
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int port = atoi(argv[1]);
    int workers = argc > 2 ? atoi(argv[2]) : 1;
    if (port < 1 || port > 65535 || workers < 1 || workers > 64) {
        fprintf(stderr, "argument out of range\n");
        return 2;
    }
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lfd < 0) {
        perror("socket");
        return 2;
    }
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 4096) < 0) {
        perror("bind/listen");
        return 2;
    }
    for (int i = 1; i < workers; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 2;
        }
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL); /* the worker dies with the first process */
            serve(lfd);
        }
    }
    printf("ready\n");
    fflush(stdout);
    serve(lfd);
    return 0;
}
