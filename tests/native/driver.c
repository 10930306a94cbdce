#define _POSIX_C_SOURCE 199309L
/* Drives the native core without Python: for the sanitizer build (ASan + UBSan) and timing.
 *
 *   driver ROM FRAMES [draw-every] : power on, press Start, play pseudo-random buttons,
 *   save/restore snapshots along the way, feed corrupted snapshots to the loader, and print
 *   a hash of RAM and screen (the same on every run). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nes.h"

static uint8_t *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)n);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return buf;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: driver ROM FRAMES [draw-every]\n");
        return 2;
    }
    nes_init();
    size_t len;
    uint8_t *rom = read_file(argv[1], &len);
    if (!rom) {
        fprintf(stderr, "cannot read %s\n", argv[1]);
        return 2;
    }
    static nes_cart cart;
    const char *err = nes_cart_load(&cart, rom, len);
    if (err) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    long frames = atol(argv[2]);
    long draw_every = argc > 3 ? atol(argv[3]) : 2;
    nes *m = calloc(1, sizeof(nes));
    nes *copy = calloc(1, sizeof(nes));
    nes_power_on(m, &cart);
    nes_power_on(copy, &cart);
    size_t snap_len = nes_snapshot_size();
    uint8_t *snap = malloc(snap_len), *bad = malloc(snap_len);
    uint32_t rng = 12345;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long loads_refused = 0;
    for (long k = 0; k < frames; k++) {
        rng = rng * 1103515245u + 12345u;
        uint8_t b = k < 400 ? ((k / 30) % 2 ? 0 : 8) : (uint8_t)(0x80 | ((rng >> 16) & 0x43));
        nes_step(m, b, draw_every > 0 && k % draw_every == 0);
        if (k % 97 == 0) {
            nes_snapshot_save(m, snap);
            if (nes_snapshot_load(copy, snap, snap_len)) return 1;
            if (memcmp(copy->ram, m->ram, sizeof m->ram) != 0) return 1;
            /* a corrupted copy, a truncated one and garbage must be refused, not crash */
            memcpy(bad, snap, snap_len);
            bad[(rng >> 8) % snap_len] ^= (uint8_t)(1 + (rng & 0x7F));
            loads_refused += nes_snapshot_load(copy, bad, snap_len) != NULL;
            loads_refused += nes_snapshot_load(copy, snap, snap_len - 1 - (rng % 64)) != NULL;
            if (nes_snapshot_load(copy, snap, snap_len)) return 1;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    uint32_t h = nes_crc32(m->ram, sizeof m->ram) ^ nes_crc32(m->screen, sizeof m->screen);
    printf("frames %ld  seconds %.3f  frames/s %.0f  hash %08x  refused %ld  faults %u\n", frames,
           secs, (double)frames / secs, h, loads_refused, m->faults);
    free(rom);
    free(m);
    free(copy);
    free(snap);
    free(bad);
    return 0;
}
