/* The machine: CPU interpreter, PPU caught up on demand, memory map, snapshots.
 *
 * Timing follows nes-py 9.0.1 (see docs/environment.md, "The native core"):
 *  - an instruction takes effect all at once on its first cycle, the PPU being 3 dots ahead;
 *  - the PPU is not ticked per cycle: it is brought up to date (ppu_run) only when the CPU
 *    touches a PPU register, when an NMI is due, and at the end of each step. Its state between
 *    two such points depends on nothing the CPU does, so the result is the same;
 *  - pixels are drawn only in steps whose screen is asked for. Every pixel is drawn once per
 *    video frame and a step is longer than a frame, so a drawn step leaves the full screen
 *    exactly as a renderer running all the time would.
 */
#include "nes.h"

#include <string.h>

#define FLAG_C 0x01
#define FLAG_Z 0x02
#define FLAG_I 0x04
#define FLAG_D 0x08
#define FLAG_B 0x10
#define FLAG_U 0x20
#define FLAG_V 0x40
#define FLAG_N 0x80

#define MASK_BG_LEFT 0x02
#define MASK_SPR_LEFT 0x04
#define MASK_BG 0x08
#define MASK_SPR 0x10
#define BOTH_ON(m) (((m)->mask & (MASK_BG | MASK_SPR)) == (MASK_BG | MASK_SPR))

#define NEVER UINT64_MAX

/* ------------------------------------------------------------------------------------------
 * Cartridge
 * ------------------------------------------------------------------------------------------ */
const char *nes_cart_load(nes_cart *cart, const uint8_t *rom, size_t len) {
    if (len < 16 || memcmp(rom, "NES\x1a", 4) != 0)
        return "not an iNES ROM (it must start with the bytes 'NES\\x1a')";
    unsigned prg_banks = rom[4], chr_banks = rom[5];
    unsigned mapper = (rom[6] >> 4) | (rom[7] & 0xF0);
    if (mapper != 0)
        return "the ROM uses a mapper other than 0 (NROM); the native core emulates NROM only";
    if (rom[6] & 0x04) return "the ROM has a trainer, which the native core does not support";
    if (prg_banks < 1 || prg_banks > 2) return "the ROM's PRG size must be 16 or 32 KiB";
    if (chr_banks != 1) return "the ROM must have 8 KiB of CHR ROM";
    size_t need = 16 + (size_t)prg_banks * 16384 + 8192;
    if (len < need) return "the ROM file is shorter than its header says";
    memcpy(cart->prg, rom + 16, (size_t)prg_banks * 16384);
    if (prg_banks == 1) memcpy(cart->prg + 16384, rom + 16, 16384);
    memcpy(cart->chr, rom + 16 + (size_t)prg_banks * 16384, 8192);
    cart->vertical = rom[6] & 1;
    for (unsigned table = 0; table < 4; table++)
        cart->nt_page[table] = (uint16_t)((cart->vertical ? (table & 1) : (table >> 1)) << 10);
    return NULL;
}

/* ------------------------------------------------------------------------------------------
 * PPU memory
 * ------------------------------------------------------------------------------------------ */
static inline unsigned nt_index(const nes *m, unsigned addr) {
    return m->cart->nt_page[(addr >> 10) & 3] | (addr & 0x3FF);
}

static inline unsigned pal_index(unsigned addr) {
    addr &= 0x1F;
    if (addr >= 0x10 && (addr & 3) == 0) addr &= 0x0F;
    return addr;
}

static uint8_t ppu_bus_read(const nes *m, unsigned addr) {
    addr &= 0xFFFF;
    if (addr < 0x2000) return m->cart->chr[addr];
    if (addr < 0x3EFF) return m->vram[nt_index(m, addr)];
    if (addr < 0x3FFF) return m->pal[pal_index(addr)];
    return 0;
}

/* colour[k]: the palette value that palette address k shows (mirrors resolved). */
static void colour_update(nes *m) {
    for (unsigned k = 0; k < 32; k++) m->colour[k] = m->pal[pal_index(k)];
}

static void ppu_bus_write(nes *m, unsigned addr, uint8_t value) {
    addr &= 0xFFFF;
    if (addr < 0x2000) return; /* CHR ROM */
    if (addr < 0x3EFF) {
        m->vram[nt_index(m, addr)] = value;
    } else if (addr < 0x3FFF) {
        m->pal[pal_index(addr)] = value;
        colour_update(m);
    }
}

/* ------------------------------------------------------------------------------------------
 * PPU: sprites for each line, computed once per change of OAM
 * ------------------------------------------------------------------------------------------ */
static void sprite_table(nes *m) {
    memset(m->tab_n, 0, sizeof m->tab_n);
    int range = (m->ctrl & 0x20) ? 16 : 8;
    for (int i = m->oam_addr / 4; i < 64; i++) {
        int y = m->oam[i * 4];
        for (int l = y; l < y + range && l < 240; l++) {
            if (m->tab_n[l] < 8) m->tab[l][m->tab_n[l]++] = (uint8_t)i;
        }
    }
    m->tab_valid = 1;
}

/* End of visible line `line`: choose the sprites of the next line drawn. */
static inline void sprite_eval(nes *m, int line) {
    if (!m->tab_valid) sprite_table(m);
    m->list_n = m->tab_n[line];
    memcpy(m->list, m->tab[line], 8);
}

/* ------------------------------------------------------------------------------------------
 * PPU: pixels
 * ------------------------------------------------------------------------------------------ */
static inline void coarse_x_add(nes *m, unsigned n) {
    unsigned c = (m->v & 0x1F) + n;
    m->v = (uint16_t)((m->v & ~0x1F) | (c & 31));
    if ((c >> 5) & 1) m->v ^= 0x400;
}

static inline void fine_y_inc(nes *m) {
    if ((m->v & 0x7000) != 0x7000) {
        m->v += 0x1000;
        return;
    }
    m->v &= ~0x7000;
    unsigned y = (m->v & 0x3E0) >> 5;
    if (y == 29) {
        y = 0;
        m->v ^= 0x800;
    } else if (y == 31) {
        y = 0;
    } else {
        y++;
    }
    m->v = (uint16_t)((m->v & ~0x3E0) | (y << 5));
}

/* Number of x in [x0, x1] with (fine_x + x) % 8 == 7: the coarse-X increments of that span. */
static inline unsigned increments(const nes *m, int x0, int x1) {
    int r = (7 - m->fine_x) & 7;
    int hi = x1 >= r ? (x1 - r) / 8 + 1 : 0;
    int lo = x0 - 1 >= r ? (x0 - 1 - r) / 8 + 1 : 0;
    return (unsigned)(hi - lo);
}

/* The two pattern bytes of sprite i's row on line y (vertical flip applied), fetched as nes-py
 * fetches them: the row offset is negative for line 0's stale sprites (C truncating %), which
 * can reach the tile before, or wrap the address past $FFFF. */
static void sprite_row(const nes *m, unsigned i, int y, int len, unsigned *lo, unsigned *hi) {
    int sy = m->oam[i * 4] + 1;
    unsigned tile = m->oam[i * 4 + 1], attr = m->oam[i * 4 + 2];
    int yo = (y - sy) % len;
    if (attr & 0x80) yo ^= (len - 1);
    int addr;
    if (len == 8) {
        addr = (int)tile * 16 + yo + ((m->ctrl & 0x08) ? 0x1000 : 0);
    } else {
        yo = (yo & 7) | ((yo & 8) << 1);
        addr = ((int)(tile >> 1) * 32 + yo) | (int)((tile & 1) << 12);
    }
    *lo = ppu_bus_read(m, (unsigned)addr & 0xFFFF);
    *hi = ppu_bus_read(m, (unsigned)(addr + 8) & 0xFFFF);
}

/* One pixel, exactly as nes-py computes it: background fetched from v (no pipeline), the first
 * opaque sprite of the line's list, sprite-0 hit, then the coarse-X increment. */
static void pixel(nes *m, int x, int y, int draw) {
    unsigned bg = 0;
    int bg_opaque = 0;
    unsigned v = m->v;
    int xf = (m->fine_x + x) & 7;
    if (m->mask & MASK_BG) {
        if (x >= 8 || (m->mask & MASK_BG_LEFT)) {
            unsigned tile = m->vram[nt_index(m, 0x2000 | (v & 0xFFF))];
            unsigned addr = tile * 16 + ((v >> 12) & 7) + ((m->ctrl & 0x10) ? 0x1000 : 0);
            uint8_t lo = m->cart->chr[addr & 0x1FFF], hi = m->cart->chr[(addr + 8) & 0x1FFF];
            bg = ((lo >> (7 - xf)) & 1) | (((hi >> (7 - xf)) & 1) << 1);
            bg_opaque = bg != 0;
            unsigned at = m->vram[nt_index(m, 0x23C0 | (v & 0xC00) | ((v >> 4) & 0x38) | ((v >> 2) & 7))];
            unsigned shift = ((v >> 4) & 4) | (v & 2);
            bg |= ((at >> shift) & 3) << 2;
        }
        if (xf == 7) coarse_x_add(m, 1);
    }
    unsigned spr = 0;
    int spr_opaque = 0, spr_front = 0;
    if ((m->mask & MASK_SPR) && (x >= 8 || (m->mask & MASK_SPR_LEFT))) {
        int len = (m->ctrl & 0x20) ? 16 : 8;
        for (int k = 0; k < m->list_n; k++) {
            unsigned i = m->list[k] & 63;
            int sx = m->oam[i * 4 + 3];
            if (x - sx < 0 || x - sx >= 8) continue;
            unsigned attr = m->oam[i * 4 + 2], plo, phi;
            sprite_row(m, i, y, len, &plo, &phi);
            int xs = (x - sx) % 8;
            if (!(attr & 0x40)) xs ^= 7;
            spr = ((plo >> xs) & 1) | (((phi >> xs) & 1) << 1);
            if (!spr) continue;
            spr_opaque = 1;
            spr |= 0x10 | ((attr & 3) << 2);
            spr_front = !(attr & 0x20);
            if (!m->s0 && (m->mask & MASK_BG) && i == 0 && bg_opaque) m->s0 = 1;
            break;
        }
    }
    if (!draw) return;
    unsigned pa = bg;
    if ((!bg_opaque && spr_opaque) || (bg_opaque && spr_opaque && spr_front)) pa = spr;
    else if (!bg_opaque && !spr_opaque) pa = 0;
    m->screen[y * NES_SCREEN_W + x] = m->pal[pal_index(pa)];
}

/* Pixels x0..x1 of line y without drawing: only v and sprite-0 hit change. */
static void pixels_quiet(nes *m, int x0, int x1, int y) {
    if (!(m->mask & MASK_BG)) return;
    if (!m->s0 && (m->mask & MASK_SPR) && m->list_n && m->list[0] == 0) {
        int sx = m->oam[3], ex = sx + 7 > 255 ? 255 : sx + 7;
        if (sx <= x1 && ex >= x0) {
            int a = sx > x0 ? sx : x0, b = ex < x1 ? ex : x1;
            if (a > x0) coarse_x_add(m, increments(m, x0, a - 1));
            for (int x = a; x <= b; x++) pixel(m, x, y, 0);
            if (b < x1) coarse_x_add(m, increments(m, b + 1, x1));
            return;
        }
    }
    coarse_x_add(m, increments(m, x0, x1));
}

/* ------------------------------------------------------------------------------------------
 * Table lookups over a row of pixels: SSSE3 shuffles where the CPU has them (16 pixels per
 * instruction), plain C elsewhere. Both give the same bytes.
 * ------------------------------------------------------------------------------------------ */
static int have_ssse3;

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

/* dst[i] = table[src[i]] for src values below 16 */
__attribute__((target("ssse3"))) static void lut16_ssse3(uint8_t *dst, const uint8_t *src,
                                                         const uint8_t *table, int n) {
    __m128i t = _mm_loadu_si128((const __m128i *)table);
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm_storeu_si128((__m128i *)(dst + i),
                         _mm_shuffle_epi8(t, _mm_loadu_si128((const __m128i *)(src + i))));
    for (; i < n; i++) dst[i] = table[src[i] & 15];
}

/* dst[i] = table[src[i] & 63] */
__attribute__((target("ssse3"))) static void lut64_ssse3(uint8_t *dst, const uint8_t *src,
                                                         const uint8_t *table, int n) {
    __m128i t0 = _mm_loadu_si128((const __m128i *)table);
    __m128i t1 = _mm_loadu_si128((const __m128i *)(table + 16));
    __m128i t2 = _mm_loadu_si128((const __m128i *)(table + 32));
    __m128i t3 = _mm_loadu_si128((const __m128i *)(table + 48));
    __m128i low = _mm_set1_epi8(0x0F), b4 = _mm_set1_epi8(0x10), b5 = _mm_set1_epi8(0x20);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m128i s = _mm_loadu_si128((const __m128i *)(src + i));
        __m128i k = _mm_and_si128(s, low);
        __m128i in4 = _mm_cmpeq_epi8(_mm_and_si128(s, b4), b4);
        __m128i in5 = _mm_cmpeq_epi8(_mm_and_si128(s, b5), b5);
        __m128i a = _mm_or_si128(_mm_and_si128(in4, _mm_shuffle_epi8(t1, k)),
                                 _mm_andnot_si128(in4, _mm_shuffle_epi8(t0, k)));
        __m128i b = _mm_or_si128(_mm_and_si128(in4, _mm_shuffle_epi8(t3, k)),
                                 _mm_andnot_si128(in4, _mm_shuffle_epi8(t2, k)));
        _mm_storeu_si128((__m128i *)(dst + i),
                         _mm_or_si128(_mm_and_si128(in5, b), _mm_andnot_si128(in5, a)));
    }
    for (; i < n; i++) dst[i] = table[src[i] & 63];
}

static void detect_cpu(void) {
    __builtin_cpu_init();
    have_ssse3 = __builtin_cpu_supports("ssse3");
}
#else
static void detect_cpu(void) { have_ssse3 = 0; }
#endif

/* dst[i] = table[src[i] % entries], entries 16 or 64 */
static inline void lut(uint8_t *dst, const uint8_t *src, const uint8_t *table, int n, int entries) {
#if defined(__x86_64__) || defined(__i386__)
    if (have_ssse3) {
        (entries == 16 ? lut16_ssse3 : lut64_ssse3)(dst, src, table, n);
        return;
    }
#endif
    for (int i = 0; i < n; i++) dst[i] = table[src[i] & (entries - 1)];
}

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "pixels_draw unpacks tile rows with a little-endian byte order"
#endif

/* spread[b]: byte k holds bit (7 - k) of b, so a pattern byte becomes 8 pixels. */
static uint64_t spread[256];

static void spread_init(void) {
    for (unsigned b = 0; b < 256; b++) {
        uint64_t v = 0;
        for (int k = 0; k < 8; k++)
            if (b & (0x80u >> k)) v |= (uint64_t)1 << (8 * k);
        spread[b] = v;
    }
}

/* Pixels x0..x1 of line y, drawn: the same result as pixel() for each x in turn, computed a
 * tile at a time (v only changes at the coarse-X increments inside the span). */
static void pixels_draw(nes *m, int x0, int x1, int y) {
    /* bg[x + fine_x] is pixel x's background (0 = transparent): with fine_x fixed during the
     * span, each tile fills one aligned 8-byte slot. */
    uint64_t bgw[34], sprw[33];
    uint8_t *bg = (uint8_t *)bgw, *spr = (uint8_t *)sprw, owner[256];
    int fx = m->fine_x;
    if (m->mask & MASK_BG) {
        const uint8_t *chr = m->cart->chr + ((m->ctrl & 0x10) ? 0x1000 : 0) + ((m->v >> 12) & 7);
        int t0 = (x0 + fx) >> 3, t1 = (x1 + fx) >> 3;
        unsigned v = m->v;
        /* v's coarse X walks along one row of tile names (and of attribute bytes), wrapping
         * into the neighbouring nametable after column 31. */
        for (int t = t0; t <= t1;) {
            const uint8_t *nt = m->vram + m->cart->nt_page[(v >> 10) & 3];
            const uint8_t *names = nt + (v & 0x3E0);
            const uint8_t *attrs = nt + 0x3C0 + ((v >> 4) & 0x38);
            unsigned yshift = (v >> 4) & 4;
            unsigned cx = v & 0x1F;
            int n = 32 - (int)cx;
            if (n > t1 - t + 1) n = t1 - t + 1;
            for (int j = 0; j < n; j++, cx++, t++) {
                const uint8_t *row = chr + names[cx] * 16;
                unsigned palbits = ((attrs[cx >> 2] >> (yshift | (cx & 2))) & 3) << 2;
                /* the tile row's 8 pixels at once: byte k is pixel k's colour */
                uint64_t px = spread[row[0]] | (spread[row[8]] << 1);
                bgw[t] = px | (((px | (px >> 1)) & 0x0101010101010101ULL) * palbits);
            }
            v = (v & ~0x1Fu) ^ 0x400; /* column 0 of the next nametable, if the span goes on */
        }
        /* each tile's increment comes after its last pixel: the span may stop before it */
        coarse_x_add(m, (unsigned)(t1 - t0 + 1) - (t1 * 8 + 7 - fx > x1));
        if (!(m->mask & MASK_BG_LEFT))
            for (int x = x0; x <= x1 && x < 8; x++) bg[x + fx] = 0;
    }
    /* Sprites: only the pixels they cover (lo..hi) are looked at again after the background. */
    int lo_x = 256, hi_x = -1;
    if ((m->mask & MASK_SPR) && m->list_n) {
        int len = (m->ctrl & 0x20) ? 16 : 8;
        int left = (m->mask & MASK_SPR_LEFT) ? 0 : 8;
        for (int k = 0; k < m->list_n; k++) {
            int sx = m->oam[(m->list[k] & 63) * 4 + 3];
            int a = sx > x0 ? sx : x0, b = sx + 7 < x1 ? sx + 7 : x1;
            if (a < left) a = left;
            if (a > b) continue;
            lo_x = a < lo_x ? a : lo_x;
            hi_x = b > hi_x ? b : hi_x;
        }
        if (lo_x <= hi_x) memset(spr + lo_x, 0, (size_t)(hi_x - lo_x + 1));
        for (int k = 0; k < m->list_n && lo_x <= hi_x; k++) {
            unsigned i = m->list[k] & 63;
            int sx = m->oam[i * 4 + 3];
            int a = sx > x0 ? sx : x0, b = sx + 7 < x1 ? sx + 7 : x1;
            if (a < left) a = left;
            if (a > b) continue;
            unsigned attr = m->oam[i * 4 + 2], plo, phi;
            sprite_row(m, i, y, len, &plo, &phi);
            uint8_t flags = (uint8_t)(0x10 | ((attr & 3) << 2) | ((attr & 0x20) ? 0 : 0x80));
            for (int x = a; x <= b; x++) {
                if (spr[x]) continue;
                int xs = (x - sx) & 7;
                if (!(attr & 0x40)) xs ^= 7;
                unsigned c = ((plo >> xs) & 1) | (((phi >> xs) & 1) << 1);
                if (!c) continue;
                spr[x] = (uint8_t)(flags | c);
                owner[x] = (uint8_t)i;
            }
        }
    }
    uint8_t *row = m->screen + y * NES_SCREEN_W;
    const uint8_t *colour = m->colour;
    int bg_on = (m->mask & MASK_BG) != 0;
    const uint8_t *b = bg + fx;
    if (bg_on) lut(row + x0, b + x0, colour, x1 - x0 + 1, 16); /* background addresses are < 16 */
    else memset(row + x0, colour[0], (size_t)(x1 - x0 + 1));
    int hit_possible = bg_on && !m->s0;
    for (int x = lo_x; x <= hi_x; x++) {
        unsigned s = spr[x];
        if (!s) continue;
        unsigned c = bg_on ? b[x] : 0;
        if (hit_possible && c && owner[x] == 0) {
            m->s0 = 1;
            hit_possible = 0;
        }
        if (!c || (s & 0x80)) row[x] = colour[s & 0x1F];
    }
}

static void pixels(nes *m, int x0, int x1, int y) {
    if (m->drawing) pixels_draw(m, x0, x1, y);
    else pixels_quiet(m, x0, x1, y);
}

/* ------------------------------------------------------------------------------------------
 * PPU: the frame's timeline, advanced to a given dot
 * ------------------------------------------------------------------------------------------ */
static inline int pre_end(const nes *m) { return 341 - (!m->even && BOTH_ON(m)); }

static void ppu_run(nes *m, uint64_t target) {
    while (m->ppu_time < target) {
        uint64_t budget = target - m->ppu_time;
        int d = m->dot;
        int end = m->state == PPU_PRE ? pre_end(m) : 341;
        if (d > end) d = end; /* only reachable from a crafted snapshot */
        int e = (uint64_t)(end - d) < budget ? end : d + (int)budget - 1;
        m->ppu_time += (uint64_t)(e - m->dot + 1 > 0 ? e - m->dot + 1 : 1);
        switch (m->state) {
        case PPU_PRE:
            if (d <= 1 && 1 <= e) m->vblank = m->s0 = 0;
            if (BOTH_ON(m)) {
                if (d <= 258 && 258 <= e) m->v = (uint16_t)((m->v & ~0x41F) | (m->t & 0x41F));
                if (d <= 304 && e >= 281) m->v = (uint16_t)((m->v & ~0x7BE0) | (m->t & 0x7BE0));
            }
            if (e == end) {
                m->state = PPU_RENDER;
                m->line = 0;
                m->dot = 1;
            } else {
                m->dot = (int16_t)(e + 1);
            }
            break;
        case PPU_RENDER: {
            int y = m->line;
            if (d <= 256 && e >= 1) pixels(m, (d < 1 ? 1 : d) - 1, (e > 256 ? 256 : e) - 1, y);
            if (d <= 257 && 257 <= e && (m->mask & MASK_BG)) fine_y_inc(m);
            if (d <= 258 && 258 <= e && BOTH_ON(m))
                m->v = (uint16_t)((m->v & ~0x41F) | (m->t & 0x41F));
            if (e == 341) {
                sprite_eval(m, y);
                m->line++;
                m->dot = 1;
                if (m->line >= 240) m->state = PPU_POST;
            } else {
                m->dot = (int16_t)(e + 1);
            }
            break;
        }
        case PPU_POST:
            if (e == 341) {
                m->line = 241;
                m->dot = 1;
                m->state = PPU_VBLANK;
            } else {
                m->dot = (int16_t)(e + 1);
            }
            break;
        default: /* PPU_VBLANK */
            if (m->line == 241 && d <= 1 && 1 <= e) m->vblank = 1;
            if (e == 341) {
                m->line++;
                m->dot = 1;
                if (m->line >= 261) {
                    m->state = PPU_PRE;
                    m->line = 0;
                    m->even ^= 1;
                }
            } else {
                m->dot = (int16_t)(e + 1);
            }
            break;
        }
    }
}

/* PPU dot of the next vblank start (line 241, dot 1), if nothing the CPU does changes the
 * timeline (a write to $2001 can: the odd-frame skip depends on it, so it recomputes this). */
static uint64_t next_vblank(const nes *m) {
    uint64_t t = m->ppu_time;
    int d = m->dot;
    switch (m->state) {
    case PPU_PRE: {
        int end = pre_end(m);
        t += (uint64_t)(end >= d ? end - d + 1 : 1);
        return t + 241u * 341u;
    }
    case PPU_RENDER:
        t += (uint64_t)(341 - d + 1);
        return t + (uint64_t)(239 - m->line) * 341u + 341u;
    case PPU_POST:
        return t + (uint64_t)(341 - d + 1);
    default:
        if (m->line == 241 && d <= 1) return t + (uint64_t)(1 - d);
        t += (uint64_t)(341 - d + 1);
        t += (uint64_t)(260 - m->line) * 341u;
        /* the pre-render line that follows belongs to a frame of the other parity */
        t += (uint64_t)(341 - (m->even && BOTH_ON(m)));
        return t + 241u * 341u;
    }
}

static inline void update_nmi(nes *m) { m->nmi_at = (m->ctrl & 0x80) ? next_vblank(m) : NEVER; }

/* ------------------------------------------------------------------------------------------
 * CPU memory map
 * ------------------------------------------------------------------------------------------ */
static uint8_t ppu_reg_read(nes *m, unsigned reg) {
    ppu_run(m, 3 * m->next);
    switch (reg) {
    case 2: {
        uint8_t v = (uint8_t)((m->vblank << 7) | (m->s0 << 6));
        m->vblank = 0;
        m->w = 0;
        return v;
    }
    case 4:
        return m->oam[m->oam_addr];
    case 7: {
        unsigned addr = m->v & 0x3FFF;
        uint8_t v;
        if (addr < 0x3F00) {
            v = m->read_buf;
            m->read_buf = ppu_bus_read(m, addr);
        } else {
            v = ppu_bus_read(m, addr);
        }
        m->v = (uint16_t)(m->v + ((m->ctrl & 0x04) ? 32 : 1));
        return v;
    }
    default:
        return 0;
    }
}

static void ppu_reg_write(nes *m, unsigned reg, uint8_t v) {
    ppu_run(m, 3 * m->next);
    switch (reg) {
    case 0:
        if ((m->ctrl ^ v) & 0x20) m->tab_valid = 0;
        m->ctrl = v;
        m->t = (uint16_t)((m->t & ~0xC00) | ((v & 3) << 10));
        update_nmi(m);
        break;
    case 1:
        m->mask = v;
        update_nmi(m);
        break;
    case 3:
        m->oam_addr = v;
        m->tab_valid = 0;
        break;
    case 4:
        m->oam[m->oam_addr++] = v;
        m->tab_valid = 0;
        break;
    case 5:
        if (!m->w) {
            m->t = (uint16_t)((m->t & ~0x1F) | (v >> 3));
            m->fine_x = v & 7;
        } else {
            m->t = (uint16_t)((m->t & ~0x73E0) | ((v & 7) << 12) | ((v & 0xF8) << 2));
        }
        m->w ^= 1;
        break;
    case 6:
        if (!m->w) {
            m->t = (uint16_t)((v & 0x3F) << 8);
        } else {
            m->t = (uint16_t)((m->t & 0xFF00) | v);
            m->v = m->t;
        }
        m->w ^= 1;
        break;
    case 7:
        ppu_bus_write(m, m->v & 0x3FFF, v);
        m->v = (uint16_t)(m->v + ((m->ctrl & 0x04) ? 32 : 1));
        break;
    default:
        break;
    }
}

static uint8_t cpu_read(nes *m, unsigned addr);

static inline uint8_t controller_read(nes *m, int port) {
    uint8_t bit;
    if (m->strobe) {
        bit = m->buttons[port] & 1;
    } else {
        bit = m->shift[port] & 1;
        m->shift[port] >>= 1;
    }
    return (uint8_t)(0x40 | bit);
}

static uint8_t cpu_read(nes *m, unsigned addr) {
    if (addr < 0x2000) return m->ram[addr & 0x7FF];
    if (addr >= 0x8000) return m->cart->prg[addr & 0x7FFF];
    if (addr < 0x4000) return ppu_reg_read(m, addr & 7);
    if (addr == 0x4016) return controller_read(m, 0);
    if (addr == 0x4017) return controller_read(m, 1);
    if (addr >= 0x6000) return m->prg_ram[addr & 0x1FFF];
    return 0;
}

static void cpu_write(nes *m, unsigned addr, uint8_t v) {
    if (addr < 0x2000) {
        m->ram[addr & 0x7FF] = v;
    } else if (addr < 0x4000) {
        ppu_reg_write(m, addr & 7, v);
    } else if (addr == 0x4014) {
        ppu_run(m, 3 * m->next);
        unsigned base = (unsigned)v << 8;
        for (unsigned i = 0; i < 256; i++)
            m->oam[(m->oam_addr + i) & 0xFF] = cpu_read(m, base + i);
        m->tab_valid = 0;
        /* the stall counts from the cycle the write starts on (the same cycle counter) */
        m->next += 513 + (m->next & 1);
    } else if (addr == 0x4016) {
        m->strobe = v & 1;
        if (!m->strobe) {
            m->shift[0] = m->buttons[0];
            m->shift[1] = m->buttons[1];
        }
    } else if (addr >= 0x6000 && addr < 0x8000) {
        m->prg_ram[addr & 0x1FFF] = v;
    }
}

/* ------------------------------------------------------------------------------------------
 * CPU
 * ------------------------------------------------------------------------------------------ */
static inline void push(nes *m, uint8_t v) { m->ram[0x100 | m->sp--] = v; }
static inline uint8_t pull(nes *m) { return m->ram[0x100 | ++m->sp]; }
static inline void nz(nes *m, uint8_t v) {
    m->p = (uint8_t)((m->p & ~(FLAG_N | FLAG_Z)) | (v & FLAG_N) | (v ? 0 : FLAG_Z));
}
static inline uint16_t read16(nes *m, unsigned addr) {
    return (uint16_t)(cpu_read(m, addr) | (cpu_read(m, (addr + 1) & 0xFFFF) << 8));
}

static void take_nmi(nes *m) {
    uint64_t at = m->nmi_at;
    ppu_run(m, at + 1);
    uint64_t cycle = at / 3 + 1;
    push(m, (uint8_t)(m->pc >> 8));
    push(m, (uint8_t)m->pc);
    push(m, (uint8_t)((m->p & ~FLAG_B) | FLAG_U));
    m->p |= FLAG_I;
    m->pc = read16(m, 0xFFFA);
    m->next += (m->zero_entry && cycle == m->next) ? 6 : 7;
    m->zero_entry = 0;
    update_nmi(m);
}

static inline void adc(nes *m, uint8_t v) {
    unsigned sum = m->a + v + (m->p & FLAG_C);
    uint8_t r = (uint8_t)sum;
    m->p = (uint8_t)((m->p & ~(FLAG_C | FLAG_V)) | (sum > 0xFF ? FLAG_C : 0) |
                     ((~(m->a ^ v) & (m->a ^ r) & 0x80) ? FLAG_V : 0));
    m->a = r;
    nz(m, r);
}

static inline void compare(nes *m, uint8_t reg, uint8_t v) {
    m->p = (uint8_t)((m->p & ~FLAG_C) | (reg >= v ? FLAG_C : 0));
    nz(m, (uint8_t)(reg - v));
}

static inline uint8_t asl(nes *m, uint8_t v) {
    m->p = (uint8_t)((m->p & ~FLAG_C) | (v >> 7));
    v <<= 1;
    nz(m, v);
    return v;
}
static inline uint8_t lsr(nes *m, uint8_t v) {
    m->p = (uint8_t)((m->p & ~FLAG_C) | (v & 1));
    v >>= 1;
    nz(m, v);
    return v;
}
static inline uint8_t rol(nes *m, uint8_t v) {
    unsigned c = m->p & FLAG_C;
    m->p = (uint8_t)((m->p & ~FLAG_C) | (v >> 7));
    v = (uint8_t)((v << 1) | c);
    nz(m, v);
    return v;
}
static inline uint8_t ror(nes *m, uint8_t v) {
    unsigned c = m->p & FLAG_C;
    m->p = (uint8_t)((m->p & ~FLAG_C) | (v & 1));
    v = (uint8_t)((v >> 1) | (c << 7));
    nz(m, v);
    return v;
}

/* Operand addresses. `extra` collects page-crossing cycles. */
#define FETCH() cpu_read(m, m->pc++)
#define ZP() (FETCH())
#define ZPX() ((FETCH() + m->x) & 0xFF)
#define ZPY() ((FETCH() + m->y) & 0xFF)
#define ABS() (ea = FETCH(), ea | (FETCH() << 8))

static inline unsigned fetch_abs(nes *m) {
    unsigned lo = cpu_read(m, m->pc++);
    return lo | ((unsigned)cpu_read(m, m->pc++) << 8);
}
static inline unsigned abs_idx(nes *m, unsigned idx, unsigned *extra) {
    unsigned base = fetch_abs(m);
    unsigned ea = (base + idx) & 0xFFFF;
    if ((base ^ ea) & 0xFF00) *extra = 1;
    return ea;
}
static inline unsigned ind_x(nes *m) {
    unsigned zp = (cpu_read(m, m->pc++) + m->x) & 0xFF;
    return m->ram[zp] | (m->ram[(zp + 1) & 0xFF] << 8);
}
static inline unsigned ind_y(nes *m, unsigned *extra) {
    unsigned zp = cpu_read(m, m->pc++);
    unsigned base = m->ram[zp] | (m->ram[(zp + 1) & 0xFF] << 8);
    unsigned ea = (base + m->y) & 0xFFFF;
    if ((base ^ ea) & 0xFF00) *extra = 1;
    return ea;
}

static inline unsigned branch(nes *m, int taken) {
    int8_t off = (int8_t)cpu_read(m, m->pc++);
    if (!taken) return 0;
    uint16_t target = (uint16_t)(m->pc + off);
    unsigned extra = ((target ^ m->pc) & 0xFF00) ? 3 : 1;
    m->pc = target;
    return extra;
}

/* The operand address of a group-1 (ALU) opcode, by its addressing bits. */
static inline unsigned alu_addr(nes *m, unsigned mode, unsigned *extra) {
    switch (mode) {
    case 0: return ind_x(m);
    case 1: return ZP();
    case 3: return fetch_abs(m);
    case 4: return ind_y(m, extra);
    case 5: return ZPX();
    case 6: return abs_idx(m, m->y, extra);
    default: return abs_idx(m, m->x, extra); /* 7 */
    }
}

static const uint8_t ALU_CYCLES[8] = {6, 3, 2, 4, 5, 4, 4, 4};

static void execute(nes *m) {
    uint64_t start = m->next;
    uint16_t pc0 = m->pc;
    uint8_t op = cpu_read(m, m->pc++);
    unsigned cycles = 2, extra = 0, ea;
    uint8_t v;

    /* Group 1: ORA AND EOR ADC STA LDA CMP SBC (opcodes xxxyyy01). */
    if ((op & 3) == 1) {
        unsigned mode = (op >> 2) & 7, kind = op >> 5;
        if (kind == 4) { /* STA: no immediate, no page-cross cycle */
            if (mode == 2) goto unknown;
            ea = alu_addr(m, mode, &extra);
            extra = 0;
            cycles = ALU_CYCLES[mode] + (mode == 4 || mode == 6 || mode == 7 ? 1 : 0);
            cpu_write(m, ea, m->a);
            goto done;
        }
        if (mode == 2) {
            v = cpu_read(m, m->pc++);
        } else {
            ea = alu_addr(m, mode, &extra);
            v = cpu_read(m, ea);
        }
        cycles = ALU_CYCLES[mode];
        switch (kind) {
        case 0: m->a |= v; nz(m, m->a); break;
        case 1: m->a &= v; nz(m, m->a); break;
        case 2: m->a ^= v; nz(m, m->a); break;
        case 3: adc(m, v); break;
        case 5: m->a = v; nz(m, v); break;
        case 6: compare(m, m->a, v); break;
        default: adc(m, (uint8_t)~v); break; /* SBC; decimal mode is ignored, as in nes-py */
        }
        goto done;
    }

    switch (op) {
    /* ---- read-modify-write ---- */
#define RMW(OPA, OPZ, OPZX, OPAB, OPABX, FN)                                          \
    case OPA: m->a = FN(m, m->a); cycles = 2; break;                                  \
    case OPZ: ea = ZP(); cycles = 5; goto rmw_##FN;                                   \
    case OPZX: ea = ZPX(); cycles = 6; goto rmw_##FN;                                 \
    case OPAB: ea = fetch_abs(m); cycles = 6; goto rmw_##FN;                          \
    case OPABX: ea = abs_idx(m, m->x, &extra); cycles = 7; goto rmw_##FN;             \
    rmw_##FN: v = cpu_read(m, ea); cpu_write(m, ea, FN(m, v)); break;
    RMW(0x0A, 0x06, 0x16, 0x0E, 0x1E, asl)
    RMW(0x4A, 0x46, 0x56, 0x4E, 0x5E, lsr)
    RMW(0x2A, 0x26, 0x36, 0x2E, 0x3E, rol)
    RMW(0x6A, 0x66, 0x76, 0x6E, 0x7E, ror)
#undef RMW
    case 0xE6: ea = ZP(); cycles = 5; goto inc;
    case 0xF6: ea = ZPX(); cycles = 6; goto inc;
    case 0xEE: ea = fetch_abs(m); cycles = 6; goto inc;
    case 0xFE: ea = abs_idx(m, m->x, &extra); cycles = 7; goto inc;
    inc: v = (uint8_t)(cpu_read(m, ea) + 1); cpu_write(m, ea, v); nz(m, v); break;
    case 0xC6: ea = ZP(); cycles = 5; goto dec;
    case 0xD6: ea = ZPX(); cycles = 6; goto dec;
    case 0xCE: ea = fetch_abs(m); cycles = 6; goto dec;
    case 0xDE: ea = abs_idx(m, m->x, &extra); cycles = 7; goto dec;
    dec: v = (uint8_t)(cpu_read(m, ea) - 1); cpu_write(m, ea, v); nz(m, v); break;
    case 0xDF: /* DCP abs,X: the one unofficial opcode nes-py executes */
        ea = abs_idx(m, m->x, &extra);
        extra = 0;
        cycles = 7;
        v = (uint8_t)(cpu_read(m, ea) - 1);
        cpu_write(m, ea, v);
        compare(m, m->a, v);
        break;

    /* ---- loads and stores of X and Y ---- */
    case 0xA2: m->x = FETCH(); nz(m, m->x); break;
    case 0xA6: m->x = cpu_read(m, ZP()); nz(m, m->x); cycles = 3; break;
    case 0xB6: m->x = cpu_read(m, ZPY()); nz(m, m->x); cycles = 4; break;
    case 0xAE: m->x = cpu_read(m, fetch_abs(m)); nz(m, m->x); cycles = 4; break;
    case 0xBE: m->x = cpu_read(m, abs_idx(m, m->y, &extra)); nz(m, m->x); cycles = 4; break;
    case 0xA0: m->y = FETCH(); nz(m, m->y); break;
    case 0xA4: m->y = cpu_read(m, ZP()); nz(m, m->y); cycles = 3; break;
    case 0xB4: m->y = cpu_read(m, ZPX()); nz(m, m->y); cycles = 4; break;
    case 0xAC: m->y = cpu_read(m, fetch_abs(m)); nz(m, m->y); cycles = 4; break;
    case 0xBC: m->y = cpu_read(m, abs_idx(m, m->x, &extra)); nz(m, m->y); cycles = 4; break;
    case 0x86: cpu_write(m, ZP(), m->x); cycles = 3; break;
    case 0x96: cpu_write(m, ZPY(), m->x); cycles = 4; break;
    case 0x8E: cpu_write(m, fetch_abs(m), m->x); cycles = 4; break;
    case 0x84: cpu_write(m, ZP(), m->y); cycles = 3; break;
    case 0x94: cpu_write(m, ZPX(), m->y); cycles = 4; break;
    case 0x8C: cpu_write(m, fetch_abs(m), m->y); cycles = 4; break;

    /* ---- compares and BIT ---- */
    case 0xE0: compare(m, m->x, FETCH()); break;
    case 0xE4: compare(m, m->x, cpu_read(m, ZP())); cycles = 3; break;
    case 0xEC: compare(m, m->x, cpu_read(m, fetch_abs(m))); cycles = 4; break;
    case 0xC0: compare(m, m->y, FETCH()); break;
    case 0xC4: compare(m, m->y, cpu_read(m, ZP())); cycles = 3; break;
    case 0xCC: compare(m, m->y, cpu_read(m, fetch_abs(m))); cycles = 4; break;
    case 0x24: ea = ZP(); cycles = 3; goto bit;
    case 0x2C: ea = fetch_abs(m); cycles = 4; goto bit;
    bit:
        v = cpu_read(m, ea);
        m->p = (uint8_t)((m->p & ~(FLAG_N | FLAG_V | FLAG_Z)) | (v & (FLAG_N | FLAG_V)) |
                         ((m->a & v) ? 0 : FLAG_Z));
        break;

    /* ---- branches ---- */
    case 0x10: cycles += branch(m, !(m->p & FLAG_N)); break;
    case 0x30: cycles += branch(m, m->p & FLAG_N); break;
    case 0x50: cycles += branch(m, !(m->p & FLAG_V)); break;
    case 0x70: cycles += branch(m, m->p & FLAG_V); break;
    case 0x90: cycles += branch(m, !(m->p & FLAG_C)); break;
    case 0xB0: cycles += branch(m, m->p & FLAG_C); break;
    case 0xD0: cycles += branch(m, !(m->p & FLAG_Z)); break;
    case 0xF0: cycles += branch(m, m->p & FLAG_Z); break;

    /* ---- jumps, calls, interrupts ---- */
    case 0x4C:
        ea = fetch_abs(m);
        m->pc = (uint16_t)ea;
        cycles = 3;
        if (ea == pc0) {
            /* A jump to itself only waits for an interrupt: skip the spins up to the NMI or
             * the end of the step (the same cycles pass, nothing else changes). */
            uint64_t until = m->step_end + 1;
            if (m->nmi_at != NEVER && m->nmi_at / 3 + 1 < until) until = m->nmi_at / 3 + 1;
            if (until > start + 3) cycles = (unsigned)(((until - start) + 2) / 3 * 3);
        }
        break;
    case 0x6C: {
        unsigned ptr = fetch_abs(m);
        unsigned hi = (ptr & 0xFF00) | ((ptr + 1) & 0xFF); /* the page-wrap bug */
        m->pc = (uint16_t)(cpu_read(m, ptr) | (cpu_read(m, hi) << 8));
        cycles = 5;
        break;
    }
    case 0x20: {
        unsigned target = fetch_abs(m);
        uint16_t ret = (uint16_t)(m->pc - 1);
        push(m, (uint8_t)(ret >> 8));
        push(m, (uint8_t)ret);
        m->pc = (uint16_t)target;
        cycles = 6;
        break;
    }
    case 0x60: {
        unsigned lo = pull(m);
        m->pc = (uint16_t)((lo | (pull(m) << 8)) + 1);
        cycles = 6;
        break;
    }
    case 0x40: {
        m->p = pull(m) | FLAG_U;
        unsigned lo = pull(m);
        m->pc = (uint16_t)(lo | (pull(m) << 8));
        cycles = 6;
        break;
    }
    case 0x00: {
        uint16_t ret = (uint16_t)(m->pc + 1);
        push(m, (uint8_t)(ret >> 8));
        push(m, (uint8_t)ret);
        push(m, (uint8_t)(m->p | FLAG_B | FLAG_U));
        m->p |= FLAG_I;
        m->pc = read16(m, 0xFFFE);
        cycles = 7 + 7;
        break;
    }

    /* ---- stack ---- */
    case 0x48: push(m, m->a); cycles = 3; break;
    case 0x08: push(m, (uint8_t)(m->p | FLAG_B | FLAG_U)); cycles = 3; break;
    case 0x68: m->a = pull(m); nz(m, m->a); cycles = 4; break;
    case 0x28: m->p = pull(m) | FLAG_U; cycles = 4; break;

    /* ---- implied ---- */
    case 0xAA: m->x = m->a; nz(m, m->x); break;
    case 0xA8: m->y = m->a; nz(m, m->y); break;
    case 0x8A: m->a = m->x; nz(m, m->a); break;
    case 0x98: m->a = m->y; nz(m, m->a); break;
    case 0xBA: m->x = m->sp; nz(m, m->x); break;
    case 0x9A: m->sp = m->x; break;
    case 0xE8: m->x++; nz(m, m->x); break;
    case 0xC8: m->y++; nz(m, m->y); break;
    case 0xCA: m->x--; nz(m, m->x); break;
    case 0x88: m->y--; nz(m, m->y); break;
    case 0x18: m->p &= ~FLAG_C; break;
    case 0x38: m->p |= FLAG_C; break;
    case 0x58: m->p &= ~FLAG_I; break;
    case 0x78: m->p |= FLAG_I; break;
    case 0xD8: m->p &= ~FLAG_D; break;
    case 0xF8: m->p |= FLAG_D; break;
    case 0xB8: m->p &= ~FLAG_V; break;
    case 0xEA: break;

    default:
    unknown:
        /* nes-py prints a message and moves on: one byte, one cycle, no halt. */
        m->pc = (uint16_t)(pc0 + 1);
        if (!m->faults++) { /* keep the first: what follows is the wreck it leaves */
            m->fault_pc = pc0;
            m->fault_op = op;
        }
        m->next = start + 1;
        m->zero_entry = 1;
        return;
    }
done:
    m->zero_entry = 0;
    /* m->next may have grown during the instruction (OAM DMA) */
    m->next += cycles + extra;
}

/* ------------------------------------------------------------------------------------------
 * Steps
 * ------------------------------------------------------------------------------------------ */
void nes_step(nes *m, uint8_t buttons, int draw) {
    m->buttons[0] = buttons;
    uint64_t end = m->done + NES_CYCLES_PER_STEP;
    m->step_end = end;
    m->drawing = (uint8_t)(draw != 0);
    for (;;) {
        uint64_t c = m->next < end ? m->next : end;
        if (m->nmi_at < 3 * c) {
            take_nmi(m);
            continue;
        }
        if (m->next > end) break;
        execute(m);
    }
    ppu_run(m, 3 * end);
    m->done = end;
    m->drawing = 0;
    m->steps++;
}

void nes_reset(nes *m) {
    m->a = m->x = m->y = 0;
    m->p = 0x34;
    m->sp = 0xFD;
    m->pc = (uint16_t)(m->cart->prg[0x7FFC] | (m->cart->prg[0x7FFD] << 8));
    m->next = 1;
    m->done = 0;
    m->zero_entry = 1;
    m->ppu_time = 0;
    m->v = m->t = 0;
    m->fine_x = m->w = 0;
    m->ctrl = 0;
    m->mask = MASK_BG | MASK_SPR; /* nes-py starts with both layers on until $2001 is written */
    m->vblank = m->s0 = 0;
    m->oam_addr = 0;
    m->read_buf = 0;
    m->even = 1;
    m->state = PPU_PRE;
    m->line = 0;
    m->dot = 0;
    m->list_n = 0;
    memset(m->list, 0, sizeof m->list);
    memset(m->oam, 0, sizeof m->oam);
    memset(m->screen, 0x0F, sizeof m->screen); /* colour $0F is black, like nes-py's zeros */
    m->tab_valid = 0;
    m->steps = 0;
    colour_update(m);
    update_nmi(m);
}

void nes_power_on(nes *m, const nes_cart *cart) {
    memset(m, 0, sizeof *m);
    m->cart = cart;
    nes_reset(m);
}

/* ------------------------------------------------------------------------------------------
 * Colours (nes-py's palette; gray is its (77 R + 150 G + 29 B) >> 8)
 * ------------------------------------------------------------------------------------------ */
static const uint32_t PALETTE[64] = {
    0x7C7C7C, 0x0000FC, 0x0000BC, 0x4428BC, 0x940084, 0xA80020, 0xA81000, 0x881400,
    0x503000, 0x007800, 0x006800, 0x005800, 0x004058, 0x000000, 0x000000, 0x000000,
    0xBCBCBC, 0x0078F8, 0x0058F8, 0x6844FC, 0xD800CC, 0xE40058, 0xF83800, 0xE45C10,
    0xAC7C00, 0x00B800, 0x00A800, 0x00A844, 0x008888, 0x000000, 0x000000, 0x000000,
    0xF8F8F8, 0x3CBCFC, 0x6888FC, 0x9878F8, 0xF878F8, 0xF85898, 0xF87858, 0xFCA044,
    0xF8B800, 0xB8F818, 0x58D854, 0x58F898, 0x00E8D8, 0x787878, 0x000000, 0x000000,
    0xFCFCFC, 0xA4E4FC, 0xB8B8F8, 0xD8B8F8, 0xF8B8F8, 0xF8A4C0, 0xF0D0B0, 0xFCE0A8,
    0xF8D878, 0xD8F878, 0xB8F8B8, 0xB8F8D8, 0x00FCFC, 0xF8D8F8, 0x000000, 0x000000,
};

#define R_(c) ((PALETTE[(c) & 63] >> 16) & 0xFF)
#define G_(c) ((PALETTE[(c) & 63] >> 8) & 0xFF)
#define B_(c) (PALETTE[(c) & 63] & 0xFF)
#define GRAY_(c) (uint8_t)((77 * R_(c) + 150 * G_(c) + 29 * B_(c)) >> 8)

static uint8_t gray_lut[256];
static uint8_t rgb_lut[256][3];

static void nes_tables_init(void) {
    for (int c = 0; c < 256; c++) {
        gray_lut[c] = GRAY_(c);
        rgb_lut[c][0] = (uint8_t)R_(c);
        rgb_lut[c][1] = (uint8_t)G_(c);
        rgb_lut[c][2] = (uint8_t)B_(c);
    }
}

void nes_screen_gray(const nes *m, uint8_t *out) { lut(out, m->screen, gray_lut, NES_SCREEN_SIZE, 64); }

void nes_screen_rgb(const nes *m, uint8_t *out) {
    for (int i = 0; i < NES_SCREEN_SIZE; i++) {
        const uint8_t *c = rgb_lut[m->screen[i]];
        out[3 * i] = c[0];
        out[3 * i + 1] = c[1];
        out[3 * i + 2] = c[2];
    }
}

/* ------------------------------------------------------------------------------------------
 * Snapshots: "MRLN", version, payload length, cartridge checksum, payload checksum, payload.
 * Every field is written explicitly (little-endian), so the bytes do not depend on the
 * compiler's struct layout and a snapshot made in one process loads in any other.
 * ------------------------------------------------------------------------------------------ */
#define SNAP_MAGIC "MRLN"
#define SNAP_VERSION 1u
#define SNAP_HEADER 16u

static uint32_t crc_table[256];

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

uint32_t nes_crc32(const uint8_t *data, size_t len) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < len; i++) c = crc_table[(c ^ data[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

uint32_t nes_cart_crc(const nes_cart *cart) {
    uint32_t a = nes_crc32(cart->prg, sizeof cart->prg);
    uint32_t b = nes_crc32(cart->chr, sizeof cart->chr);
    return a ^ (b * 2654435761u) ^ cart->vertical;
}

typedef struct {
    uint8_t *p;       /* writing */
    const uint8_t *q; /* reading */
} cursor;

#define PUT(bytes, n) (memcpy(c->p, (bytes), (n)), c->p += (n))
static void put8(cursor *c, uint8_t v) { *c->p++ = v; }
static void put16(cursor *c, uint16_t v) { put8(c, (uint8_t)v); put8(c, (uint8_t)(v >> 8)); }
static void put32(cursor *c, uint32_t v) { put16(c, (uint16_t)v); put16(c, (uint16_t)(v >> 16)); }
static void put64(cursor *c, uint64_t v) { put32(c, (uint32_t)v); put32(c, (uint32_t)(v >> 32)); }
static uint8_t get8(cursor *c) { return *c->q++; }
static uint16_t get16(cursor *c) { uint16_t v = get8(c); return (uint16_t)(v | (get8(c) << 8)); }
static uint32_t get32(cursor *c) { uint32_t v = get16(c); return v | ((uint32_t)get16(c) << 16); }
static uint64_t get64(cursor *c) { uint64_t v = get32(c); return v | ((uint64_t)get32(c) << 32); }
#define GET(bytes, n) (memcpy((bytes), c->q, (n)), c->q += (n))

/* One list of the saved fields, used by both directions so they cannot drift apart. */
#define FIELDS(F8, F16, F32, F64, FBYTES)                                                     \
    F16(pc) F8(a) F8(x) F8(y) F8(sp) F8(p) F8(zero_entry) F64(next) F64(done) F64(ppu_time)  \
    F16(v) F16(t) F8(fine_x) F8(w) F8(ctrl) F8(mask) F8(vblank) F8(s0) F8(oam_addr)          \
    F8(read_buf) F8(even) F8(state) F16(line) F16(dot) FBYTES(list) F8(list_n) FBYTES(oam)   \
    FBYTES(vram) FBYTES(pal) FBYTES(buttons) FBYTES(shift) F8(strobe) FBYTES(ram)            \
    FBYTES(prg_ram) FBYTES(screen) F64(steps) F32(faults) F16(fault_pc) F8(fault_op)

#define SZ8(f) +1
#define SZ16(f) +2
#define SZ32(f) +4
#define SZ64(f) +8
#define SZB(f) +sizeof(((nes *)0)->f)
static const size_t PAYLOAD = 0 FIELDS(SZ8, SZ16, SZ32, SZ64, SZB);

size_t nes_snapshot_size(void) { return SNAP_HEADER + PAYLOAD; }

void nes_snapshot_save(const nes *m, uint8_t *out) {
    cursor cc = {out + SNAP_HEADER, NULL}, *c = &cc;
#define W8(f) put8(c, (uint8_t)m->f);
#define W16(f) put16(c, (uint16_t)m->f);
#define W32(f) put32(c, m->f);
#define W64(f) put64(c, m->f);
#define WB(f) PUT(m->f, sizeof m->f);
    FIELDS(W8, W16, W32, W64, WB)
    cursor hh = {out, NULL}, *h = &hh;
    memcpy(h->p, SNAP_MAGIC, 4);
    h->p += 4;
    put16(h, SNAP_VERSION);
    put16(h, 0);
    put32(h, nes_cart_crc(m->cart));
    put32(h, nes_crc32(out + SNAP_HEADER, PAYLOAD));
}

const char *nes_snapshot_load(nes *m, const uint8_t *data, size_t len) {
    if (len < SNAP_HEADER || memcmp(data, SNAP_MAGIC, 4) != 0)
        return "not a native-core snapshot (it must start with b'MRLN')";
    cursor hh = {NULL, data + 4}, *h = &hh;
    unsigned version = get16(h);
    get16(h);
    uint32_t cart = get32(h), crc = get32(h);
    if (version != SNAP_VERSION)
        return "snapshot of another native-core version (this core reads version 1)";
    if (len != SNAP_HEADER + PAYLOAD) return "snapshot has the wrong length";
    if (cart != nes_cart_crc(m->cart)) return "snapshot was made with another ROM";
    if (crc != nes_crc32(data + SNAP_HEADER, PAYLOAD)) return "snapshot is corrupted (checksum)";
    nes s;
    memset(&s, 0, sizeof s);
    cursor cc = {NULL, data + SNAP_HEADER}, *c = &cc;
#define R8(f) s.f = get8(c);
#define R16(f) s.f = get16(c);
#define R32(f) s.f = get32(c);
#define R64(f) s.f = get64(c);
#define RB(f) GET(s.f, sizeof s.f);
    FIELDS(R8, R16, R32, R64, RB)
    /* A checksum only proves the bytes are what was written; ranges keep a crafted
     * snapshot from steering the machine outside its states. */
    int line_ok = (s.state == PPU_PRE && s.line == 0) ||
                  (s.state == PPU_RENDER && s.line >= 0 && s.line < 240) ||
                  (s.state == PPU_POST && s.line == 240) ||
                  (s.state == PPU_VBLANK && s.line >= 241 && s.line <= 260);
    int ok = line_ok && s.dot >= 0 && s.dot <= 341 && s.list_n <= 8 && s.fine_x <= 7 &&
             s.w <= 1 && s.vblank <= 1 && s.s0 <= 1 && s.even <= 1 && s.zero_entry <= 1 &&
             s.strobe <= 1 && s.ppu_time == 3 * s.done && s.next > s.done &&
             s.next - s.done <= 2048;
    for (int i = 0; ok && i < 8; i++) ok = s.list[i] < 64;
    if (!ok) return "snapshot holds an impossible machine state";
    s.cart = m->cart;
    s.tab_valid = 0;
    *m = s;
    colour_update(m);
    update_nmi(m);
    return NULL;
}

void nes_init(void) {
    detect_cpu();
    spread_init();
    nes_tables_init();
    crc_init();
}
