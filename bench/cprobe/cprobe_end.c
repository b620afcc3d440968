/*
 * cprobe_end: the end host of bench/cprobe/cprobe. One thread, one
 * level-triggered epoll; it accepts every connection and answers each
 * 40-byte request with 168 bytes (the size of our end host's reply to a
 * continuous probe), whatever the request holds.
 *
 * usage: cprobe_end PORT        (listens on 127.0.0.1:PORT)
 * On SIGTERM or SIGINT it prints the requests answered, and exits.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define REQ_BYTES 40
#define REPLY_BYTES 168
#define BATCH 64

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

int main(int argc, char **argv) {
	if (argc != 2) {
		fprintf(stderr, "usage: cprobe_end PORT\n");
		return 2;
	}
	struct rlimit rl;
	getrlimit(RLIMIT_NOFILE, &rl);
	rl.rlim_cur = rl.rlim_max;
	setrlimit(RLIMIT_NOFILE, &rl);
	struct sigaction sa = {0};
	sa.sa_handler = on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	int *pending = calloc(rl.rlim_cur + 1, sizeof *pending); /* request bytes not yet answered, per fd */
	static char reply[REPLY_BYTES * BATCH];
	if (!pending) {
		fprintf(stderr, "cprobe_end: out of memory\n");
		return 1;
	}
	int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in a = {0};
	a.sin_family = AF_INET;
	a.sin_port = htons(atoi(argv[1]));
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 4096)) {
		perror("cprobe_end: listen");
		return 1;
	}
	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = {.events = EPOLLIN, .data.fd = s};
	epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev);
	printf("cprobe_end listening on 127.0.0.1:%s\n", argv[1]);
	fflush(stdout);

	unsigned long long answered = 0, refused = 0;
	struct epoll_event events[256];
	char buf[65536];
	while (!stop) {
		int n = epoll_wait(ep, events, 256, -1);
		for (int i = 0; i < n; i++) {
			int fd = events[i].data.fd;
			if (fd == s) {
				for (;;) {
					int c = accept4(s, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
					if (c < 0) {
						if (errno != EAGAIN && errno != EINTR)
							refused++;
						break;
					}
					setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
					struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
					epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
					pending[c] = 0;
				}
				continue;
			}
			ssize_t r = read(fd, buf, sizeof buf);
			if (r < 0 && (errno == EAGAIN || errno == EINTR))
				continue;
			if (r <= 0) {
				close(fd);
				continue;
			}
			pending[fd] += (int)r;
			int k = pending[fd] / REQ_BYTES;
			pending[fd] %= REQ_BYTES;
			while (k > 0) {
				int b = k < BATCH ? k : BATCH;
				if (write(fd, reply, (size_t)b * REPLY_BYTES) < 0)
					break; /* a prober that does not read: it loses its replies */
				answered += b;
				k -= b;
			}
		}
	}
	printf("cprobe_end: %llu requests answered, %llu accept errors\n", answered, refused);
	return 0;
}
