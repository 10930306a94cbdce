/* The Super Mario Bros machine: a 6502 CPU, the PPU, NROM memory and two controllers,
 * timed exactly as nes-py 9.0.1 times them (its RAM after every step is the oracle).
 *
 * Plain C, no Python: the binding (module.c), the sanitizer driver and the fuzzer all use
 * this header. Every field that changes while the machine runs is saved in a snapshot. */
#ifndef MARIO_RL_NES_H
#define MARIO_RL_NES_H

#include <stddef.h>
#include <stdint.h>

#define NES_RAM_SIZE 2048
#define NES_SCREEN_W 256
#define NES_SCREEN_H 240
#define NES_SCREEN_SIZE (NES_SCREEN_W * NES_SCREEN_H)
#define NES_CYCLES_PER_STEP 29781u

/* Cartridge: read-only and shared by every machine made from it. */
typedef struct {
    uint8_t prg[32768]; /* a 16 KiB PRG is stored twice, so $8000-$FFFF map with one mask */
    uint8_t chr[8192];
    uint8_t vertical;   /* nametable mirroring: 1 vertical, 0 horizontal */
    uint16_t nt_page[4]; /* VRAM offset of each of the four nametables */
} nes_cart;

enum { PPU_PRE = 0, PPU_RENDER = 1, PPU_POST = 2, PPU_VBLANK = 3 };

typedef struct {
    /* CPU */
    uint16_t pc;
    uint8_t a, x, y, sp, p;
    uint8_t zero_entry; /* the next instruction starts with no cycles left over (after reset or
                           a 1-cycle unknown opcode): an NMI then delays it 6 cycles, not 7 */
    uint64_t next;      /* CPU cycle (1-based since reset) at which the next instruction runs */
    uint64_t done;      /* CPU cycles completed by whole steps */
    /* PPU */
    uint64_t ppu_time;  /* PPU dots processed since reset */
    uint16_t v, t;
    uint8_t fine_x, w, ctrl, mask, vblank, s0, oam_addr, read_buf, even;
    uint8_t state;
    int16_t line, dot;  /* the dot that the next PPU tick processes */
    uint8_t list[8], list_n; /* sprites chosen for the line being drawn (OAM indices) */
    uint8_t oam[256];
    uint8_t vram[2048];
    uint8_t pal[32];
    /* controllers */
    uint8_t buttons[2], shift[2], strobe;
    /* memory */
    uint8_t ram[NES_RAM_SIZE];
    uint8_t prg_ram[8192];
    uint8_t screen[NES_SCREEN_SIZE]; /* palette values of the last drawn pixels */
    /* bookkeeping */
    uint64_t steps;
    uint32_t faults;     /* unknown opcodes executed (nes-py skips them as 1-byte, 1-cycle) */
    uint16_t fault_pc;
    uint8_t fault_op;

    /* ---- not saved: caches and per-call settings ---- */
    const nes_cart *cart;
    uint64_t nmi_at;     /* PPU dot of the next NMI, or UINT64_MAX */
    uint64_t step_end;   /* last CPU cycle of the step being run */
    uint8_t drawing;     /* write pixels during this step */
    uint8_t colour[32];  /* palette value shown by each palette address */
    uint8_t tab_valid;
    uint8_t tab_n[240];
    uint8_t tab[240][8];
} nes;

/* Checks a cartridge image (iNES header + PRG + CHR); returns NULL or a one-line reason. */
const char *nes_cart_load(nes_cart *cart, const uint8_t *rom, size_t len);

/* Power-on: RAM, VRAM, palette, OAM and screen cleared, then reset. */
void nes_power_on(nes *m, const nes_cart *cart);
/* nes-py's reset(): CPU and PPU registers only; memory is kept. */
void nes_reset(nes *m);

/* One nes-py step (29,781 CPU cycles) with `buttons` on controller 1. `draw` writes pixels. */
void nes_step(nes *m, uint8_t buttons, int draw);

/* Colour conversion of the screen. */
void nes_screen_gray(const nes *m, uint8_t *out);           /* 240*256 */
void nes_screen_rgb(const nes *m, uint8_t *out);            /* 240*256*3 */
/* Fills the colour and checksum tables: call once per process before anything else. */
void nes_init(void);
uint32_t nes_crc32(const uint8_t *data, size_t len);
uint32_t nes_cart_crc(const nes_cart *cart);

/* Snapshots: a self-describing byte string; load returns NULL or a one-line reason. */
size_t nes_snapshot_size(void);
void nes_snapshot_save(const nes *m, uint8_t *out);
const char *nes_snapshot_load(nes *m, const uint8_t *data, size_t len);

#endif
