/*
 * cstamp: the reference the relay's STAMP reflector is compared with. A
 * plain blocking C Session-Reflector (RFC 8762, unauthenticated mode,
 * stateless): one recvmsg with the kernel's receive timestamp
 * (SO_TIMESTAMPNS) as T2, the reply written in place from the RFC's
 * table, T3 from CLOCK_REALTIME right before one sendmsg. The reply is the
 * request's size. No TLV processing, no sessions, no bounds.
 *
 * usage: cstamp PORT        (listens on 127.0.0.1:PORT)
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static void put_ntp(unsigned char *p, const struct timespec *ts) {
	uint32_t sec = htonl((uint32_t)(ts->tv_sec + 2208988800u));
	uint32_t frac = htonl((uint32_t)(((uint64_t)ts->tv_nsec << 32) / 1000000000u));
	memcpy(p, &sec, 4);
	memcpy(p + 4, &frac, 4);
}

int main(int argc, char **argv) {
	if (argc != 2) {
		fprintf(stderr, "usage: cstamp PORT\n");
		return 2;
	}
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	int one = 1, ttlon = 1;
	setsockopt(s, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
	setsockopt(s, IPPROTO_IP, IP_RECVTTL, &ttlon, sizeof ttlon);
	int rcvbuf = 4 << 20;
	setsockopt(s, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
	inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
	if (bind(s, (struct sockaddr *)&a, sizeof a) != 0) {
		perror("cstamp: bind");
		return 1;
	}
	struct sigaction sa = {.sa_handler = on_signal};
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	unsigned char buf[65536], ctl[256];
	unsigned long answered = 0;
	while (!stop) {
		struct sockaddr_in from;
		struct iovec iov = {buf, sizeof buf};
		struct msghdr msg = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &iov, .msg_iovlen = 1,
				     .msg_control = ctl, .msg_controllen = sizeof ctl};
		ssize_t n = recvmsg(s, &msg, 0);
		if (n < 44)
			continue;
		struct timespec t2 = {0, 0}, t3;
		int ttl = 255;
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
			if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_TIMESTAMPNS)
				memcpy(&t2, CMSG_DATA(c), sizeof t2);
			if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_TTL)
				memcpy(&ttl, CMSG_DATA(c), sizeof ttl);
		}
		if (t2.tv_sec == 0)
			clock_gettime(CLOCK_REALTIME, &t2);
		/* RFC 8762 §4.3.1: the sender's fields move to 24..40 first. */
		unsigned char sender[14];
		memcpy(sender, buf, 14);
		memcpy(buf + 24, sender, 4);      /* Session-Sender Sequence Number */
		memcpy(buf + 28, sender + 4, 8);  /* Session-Sender Timestamp */
		memcpy(buf + 36, sender + 12, 2); /* Session-Sender Error Estimate */
		memset(buf + 38, 0, 2);
		buf[40] = (unsigned char)ttl;
		memset(buf + 41, 0, 3);
		/* Sequence Number: stateless, the sender's (already at 0). */
		buf[12] = 0x3d; /* Error Estimate: S=0 Z=0, scale 61 multiplier 1 */
		buf[13] = 0x01;
		put_ntp(buf + 16, &t2);
		clock_gettime(CLOCK_REALTIME, &t3);
		put_ntp(buf + 4, &t3);
		if (sendto(s, buf, n, 0, (struct sockaddr *)&from, msg.msg_namelen) == n)
			answered++;
	}
	printf("cstamp: %lu packets answered\n", answered);
	return 0;
}
