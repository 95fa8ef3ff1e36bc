/* Real PVM 3.4.6's packed messages, for bench_pvm.py: pvm_initsend(PvmDataDefault) +
 * pvm_pkbyte + pvm_send, pvm_recv + pvm_upkbyte, between this task and a copy of it
 * that it spawns. Usage: pvm_bench ROUNDS DIRECT [HOST] (DIRECT 1: PvmRouteDirect in
 * both; HOST: the copy is spawned there, PvmTaskHost, else where PVM places it).
 * Prints "lat SIZE SECONDS" (half a round trip, the mean), "med SIZE SECONDS" (half the
 * median round trip) and "bw SIZE BYTES_PER_SECOND". */
#include <pvm3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const int lat_sizes[] = {8, 64, 1024, 16384, 65536, 1 << 20};
static const int bw_sizes[] = {64 << 10, 1 << 20, 4 << 20, 16 << 20};
#define NLAT (int)(sizeof lat_sizes / sizeof *lat_sizes)
#define NBW (int)(sizeof bw_sizes / sizeof *bw_sizes)
enum { TAG = 1, ACK = 2 };

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void send_bytes(int tid, char *buf, int n, int tag) {
    pvm_initsend(PvmDataDefault);
    pvm_pkbyte(buf, n, 1);
    pvm_send(tid, tag);
}

static void recv_bytes(int tid, char *buf, int n, int tag) {
    pvm_recv(tid, tag);
    pvm_upkbyte(buf, n, 1);
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 100, direct = argc > 2 ? atoi(argv[2]) : 0;
    char *buf = malloc(16 << 20), *back = malloc(16 << 20);
    int me = pvm_mytid(), parent = pvm_parent(), i, k, peer;
    if (me < 0) return 1;
    if (direct) pvm_setopt(PvmRoute, PvmRouteDirect);
    memset(buf, 7, 16 << 20);
    if (parent > 0 && argc > 3) { /* the echo copy */
        for (i = 0; i < NLAT; i++)
            for (k = 0; k < rounds + 2; k++) {
                recv_bytes(parent, back, lat_sizes[i], TAG);
                send_bytes(parent, back, lat_sizes[i], TAG);
            }
        for (i = 0; i < NBW; i++) {
            int n = rounds / 10 < 8 ? 8 : rounds / 10;
            for (k = 0; k < n + 2; k++) recv_bytes(parent, back, bw_sizes[i], TAG);
            send_bytes(parent, back, 1, ACK);
        }
        pvm_exit();
        return 0;
    }
    char *args[] = {argv[1], argv[2], "echo", NULL};
    char *host = argc > 3 ? argv[3] : "";
    if (pvm_spawn(argv[0], args, *host ? PvmTaskHost : PvmTaskDefault, host, 1, &peer) != 1) {
        fprintf(stderr, "spawn failed: %d\n", peer);
        pvm_exit();
        return 1;
    }
    double *rt = malloc(sizeof *rt * (rounds + 2));
    for (i = 0; i < NLAT; i++) {
        double t0 = 0, t;
        for (k = 0; k < rounds + 2; k++) {
            t = now();
            if (k == 2) t0 = t;
            send_bytes(peer, buf, lat_sizes[i], TAG);
            recv_bytes(peer, back, lat_sizes[i], TAG);
            rt[k] = now() - t;
        }
        printf("lat %d %.9f\n", lat_sizes[i], (now() - t0) / rounds / 2);
        qsort(rt + 2, rounds, sizeof *rt, by_value);
        printf("med %d %.9f\n", lat_sizes[i], rt[2 + rounds / 2] / 2);
    }
    for (i = 0; i < NBW; i++) {
        int n = rounds / 10 < 8 ? 8 : rounds / 10;
        double t0 = 0;
        for (k = 0; k < n + 2; k++) {
            if (k == 2) t0 = now();
            send_bytes(peer, buf, bw_sizes[i], TAG);
        }
        recv_bytes(peer, back, 1, ACK);
        printf("bw %d %.1f\n", bw_sizes[i], (double)bw_sizes[i] * n / (now() - t0));
    }
    pvm_exit();
    return 0;
}
