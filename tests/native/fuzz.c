/* libFuzzer harness for the native core: snapshots from arbitrary bytes, and arbitrary RAM and
 * buttons fed to a running machine. Any crash, sanitizer report or hang is a bug.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -I../../src/mario_rl/envs/nes \
 *       ../../src/mario_rl/envs/nes/nes.c fuzz.c -o fuzz
 *   MARIO_RL_ROM=path/to/super-mario-bros.nes ./fuzz -runs=200000 -max_len=4096
 *
 * First input byte: even = the rest patches a valid snapshot (checksum recomputed half of the
 * time, so the loader's range checks are reached), odd = the rest is (address, value) RAM
 * pokes and buttons for a machine that then runs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nes.h"

static nes_cart cart;
static nes base, m;
static uint8_t *snap;
static size_t snap_len;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    const char *path = getenv("MARIO_RL_ROM");
    FILE *f = path ? fopen(path, "rb") : NULL;
    if (!f) {
        fprintf(stderr, "set MARIO_RL_ROM to the Super Mario Bros ROM\n");
        exit(2);
    }
    static uint8_t rom[65536];
    size_t len = fread(rom, 1, sizeof rom, f);
    fclose(f);
    nes_init();
    if (nes_cart_load(&cart, rom, len)) exit(2);
    nes_power_on(&base, &cart);
    /* a machine in play: through the title screen into 1-1 */
    for (int k = 0; k < 300; k++) nes_step(&base, (k / 30) % 2 ? 0 : 8, 0);
    snap_len = nes_snapshot_size();
    snap = malloc(snap_len);
    nes_snapshot_save(&base, snap);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    if ((data[0] & 1) == 0) {
        uint8_t *buf = malloc(snap_len);
        memcpy(buf, snap, snap_len);
        /* (offset hi, offset lo, value) triples patch the snapshot */
        for (size_t i = 1; i + 2 < size; i += 3) {
            size_t off = ((size_t)data[i] << 8 | data[i + 1]) * 7 % snap_len;
            buf[off] = data[i + 2];
        }
        if (data[0] & 2) {
            uint32_t crc = nes_crc32(buf + 16, snap_len - 16);
            memcpy(buf + 12, &crc, 4);
        }
        size_t len = (data[0] & 4) ? snap_len - (data[1] % 17) : snap_len;
        m = base;
        if (nes_snapshot_load(&m, buf, len) == NULL) {
            for (int k = 0; k < 3; k++) nes_step(&m, data[1], k & 1);
        }
        free(buf);
        return 0;
    }
    m = base;
    size_t i = 1;
    for (; i + 1 < size && i < 64; i += 2) m.ram[(data[i] << 3 | data[i + 1] >> 5) & 0x7FF] = data[i + 1];
    for (int k = 0; k < 4 && i < size; k++, i++) nes_step(&m, data[i], data[i] & 1);
    return 0;
}
