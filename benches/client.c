/* The Rust server benchmark's load: N one-line connections in a row to ADDR (host:port),
 * each sending a number and checking the answer is one more, then "quit". Prints
 * requests per second. In C rather than a scripting language so that the client's own
 * CPU (it shares the machine with the server and the recorder) stays small. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int dial(const struct sockaddr_in *a) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  if (s < 0 || connect(s, (const struct sockaddr *)a, sizeof *a) < 0) {
    perror("client: connect");
    exit(1);
  }
  return s;
}

/* Sends `line`, reads the answer until the server closes; returns it. */
static long ask(const struct sockaddr_in *a, const char *line, char *buf, size_t size) {
  int s = dial(a);
  size_t len = strlen(line);
  if (write(s, line, len) != (ssize_t)len) {
    perror("client: write");
    exit(1);
  }
  size_t got = 0;
  ssize_t r;
  while (got < size - 1 && (r = read(s, buf + got, size - 1 - got)) > 0) got += (size_t)r;
  buf[got] = 0;
  close(s);
  return atol(buf);
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: client HOST:PORT REQUESTS\n");
    return 2;
  }
  char *colon = strrchr(argv[1], ':');
  if (!colon) {
    fprintf(stderr, "client: no port in %s\n", argv[1]);
    return 2;
  }
  *colon = 0;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
  if (inet_pton(AF_INET, argv[1], &a.sin_addr) != 1) {
    fprintf(stderr, "client: bad address %s\n", argv[1]);
    return 2;
  }
  long n = atol(argv[2]);
  char buf[64], line[32];
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (long i = 1; i <= n; i++) {
    snprintf(line, sizeof line, "%ld\n", i);
    long answer = ask(&a, line, buf, sizeof buf);
    if (answer != i + 1) {
      fprintf(stderr, "client: request %ld answered \"%s\"\n", i, buf);
      return 1;
    }
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  ask(&a, "quit\n", buf, sizeof buf);
  double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
  printf("%.0f\n", (double)n / s);
  return 0;
}
