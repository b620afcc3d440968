/*
 * cecho: the reference a relay's scheduling wait is compared with under CPU
 * contention. A plain blocking TCP echo, one process, one thread per
 * connection's lifetime (it serves connections one after another), that
 * measures its own wait the way a relay does: the kernel's receive
 * timestamp of each read (SO_TIMESTAMPNS) against CLOCK_REALTIME right
 * after the read returns. On SIGTERM or SIGINT it prints the median and
 * p90 wait in microseconds over every read, and exits.
 *
 * usage: cecho PORT        (listens on 127.0.0.1:PORT)
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAXS 1000000
static double waits[MAXS];
static int nwaits;
static volatile sig_atomic_t stop;

static void on_signal(int sig) { (void)sig; stop = 1; }

static int cmp(const void *a, const void *b) {
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static void report(void) {
	if (nwaits == 0) {
		printf("cecho: no stamped reads\n");
		return;
	}
	qsort(waits, nwaits, sizeof waits[0], cmp);
	printf("cecho: %d reads, wait median %.1f us, p90 %.1f us\n", nwaits, waits[nwaits / 2], waits[nwaits * 9 / 10]);
	fflush(stdout);
}

static void serve(int c) {
	char buf[65536], ctl[256];
	int one = 1;
	setsockopt(c, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
	setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	while (!stop) {
		struct iovec iov = {buf, sizeof buf};
		struct msghdr msg = {0};
		msg.msg_iov = &iov;
		msg.msg_iovlen = 1;
		msg.msg_control = ctl;
		msg.msg_controllen = sizeof ctl;
		ssize_t n = recvmsg(c, &msg, 0);
		if (n <= 0)
			break;
		struct timespec now;
		clock_gettime(CLOCK_REALTIME, &now);
		for (struct cmsghdr *h = CMSG_FIRSTHDR(&msg); h; h = CMSG_NXTHDR(&msg, h)) {
			if (h->cmsg_level == SOL_SOCKET && h->cmsg_type == SO_TIMESTAMPNS && nwaits < MAXS) {
				struct timespec ts;
				memcpy(&ts, CMSG_DATA(h), sizeof ts);
				double w = (now.tv_sec - ts.tv_sec) * 1e6 + (now.tv_nsec - ts.tv_nsec) / 1e3;
				if (w >= 0 && w < 10e6)
					waits[nwaits++] = w;
			}
		}
		for (ssize_t off = 0; off < n;) {
			ssize_t k = write(c, buf + off, n - off);
			if (k <= 0)
				return;
			off += k;
		}
	}
}

int main(int argc, char **argv) {
	if (argc != 2) {
		fprintf(stderr, "usage: cecho PORT\n");
		return 2;
	}
	struct sigaction sa = {0};
	sa.sa_handler = on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in a = {0};
	a.sin_family = AF_INET;
	a.sin_port = htons(atoi(argv[1]));
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 16)) {
		perror("cecho: listen");
		return 1;
	}
	printf("cecho listening on 127.0.0.1:%s\n", argv[1]);
	fflush(stdout);
	while (!stop) {
		int c = accept(s, NULL, NULL);
		if (c < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		serve(c);
		close(c);
	}
	report();
	return 0;
}
