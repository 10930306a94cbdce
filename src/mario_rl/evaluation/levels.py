"""Where each stage's goal (flag pole or axe) lies, read from the level data in the game's ROM.

The goal's x is the stage's length for progress figures: ``x_max / goal_x`` is the share of the
stage an episode covered (the 1-1 flag pole stands at x = 3168; Mario's x reads 3161-3170 when
he grabs it). Nothing is measured by playing: the numbers come from the same bytes the game
draws its levels from, so they hold for every stage, including ones no agent has cleared yet.

How the ROM describes a stage (facts of the Super Mario Bros level format, as documented by the
community disassembly of the game; table names below are that disassembly's):

* ``WorldAddrOffsets`` gives, per world, the start of its list in ``AreaAddrOffsets``: one
  *area pointer* byte per area (bits 5-6 the area type: water, ground, underground, castle;
  bits 0-4 the area number). Worlds 1, 2, 4 and 7 have a fifth entry, the intro scene before
  stage 2 (Mario walking into a pipe), which leads to the next area of the list.
* ``AreaDataHOffsets`` / ``AreaDataAddrLow`` / ``AreaDataAddrHigh`` locate an area's objects:
  two header bytes, then two bytes per object until ``0xFD``. Byte 1: column within the page
  (high nibble) and row (low nibble); byte 2: bit 7 moves to the next page. Row 13 holds
  special objects: with bit 6 set, ``byte2 & 0x0F`` is 1 for the flag pole and 2 for the axe;
  with bit 6 clear the byte is a page skip to ``byte2 & 0x1F``. So an object's x in pixels is
  ``page * 256 + column * 16``, the same coordinates as Mario's x in RAM (0x6D * 256 + 0x86).
* ``EnemyAddrHOffsets`` / ``EnemyDataAddrLow`` / ``EnemyDataAddrHigh`` locate an area's enemy
  data, which also holds the pipe exits: three-byte objects in row 14 (target area pointer,
  world, entrance page). Underground and water stages (1-2, 2-2, 4-2, 7-2) end through a pipe
  into a ground area whose flag pole is the goal; Mario enters it at a page close to the pole,
  so x stays comparable.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ..envs.snapshots import rom_path
from ..envs.stages import STAGES, world_stage

# Table addresses in CPU space ($8000-$FFFF is the 32 KiB PRG ROM after the 16-byte header).
_WORLD_ADDR_OFFSETS = 0x9CB4
_AREA_ADDR_OFFSETS = 0x9CBC
_ENEMY_ADDR_H_OFFSETS = 0x9CE0
_ENEMY_DATA_ADDR_LOW = 0x9CE4
_ENEMY_DATA_ADDR_HIGH = 0x9D06
_AREA_DATA_H_OFFSETS = 0x9D28
_AREA_DATA_ADDR_LOW = 0x9D2C
_AREA_DATA_ADDR_HIGH = 0x9D4E
# World 1's area list, to recognise the ROM these addresses belong to.
_WORLD1_AREAS = bytes((0x25, 0x29, 0xC0, 0x26, 0x60))

_SPECIAL_ROW, _POINTER_ROW, _ENEMY_PAGE_SKIP_ROW = 13, 14, 15
_FLAG_POLE, _AXE = 1, 2


@dataclass(frozen=True)
class Goal:
    """The end of a stage."""

    x: int
    """Its x in pixels, in the coordinates of Mario's x in RAM."""
    kind: str
    """'flag' (a flag pole) or 'axe' (the bridge axe of a castle)."""
    area: int
    """Area pointer of the area holding it."""


class _Rom:
    """The PRG ROM of Super Mario Bros with reads by CPU address."""

    def __init__(self, data: bytes) -> None:
        self.prg = data[16 : 16 + 0x8000]
        if len(self.prg) != 0x8000 or self.bytes(_AREA_ADDR_OFFSETS, 5) != _WORLD1_AREAS:
            raise ValueError("not the Super Mario Bros ROM this level reader knows")

    def byte(self, addr: int) -> int:
        return self.prg[addr - 0x8000]

    def bytes(self, addr: int, n: int) -> bytes:
        return self.prg[addr - 0x8000 : addr - 0x8000 + n]

    def _table_index(self, area: int, h_offsets: int) -> int:
        return self.byte(h_offsets + ((area >> 5) & 3)) + (area & 0x1F)

    def area_objects(self, area: int) -> list[tuple[int, int, int]]:
        """(x, row, byte 2 without the page bit) of every object of an area, page skips applied."""
        i = self._table_index(area, _AREA_DATA_H_OFFSETS)
        addr = self.byte(_AREA_DATA_ADDR_LOW + i) | self.byte(_AREA_DATA_ADDR_HIGH + i) << 8
        addr += 2  # header
        page, out = 0, []
        while (b1 := self.byte(addr)) != 0xFD:
            b2 = self.byte(addr + 1)
            addr += 2
            if b2 & 0x80:
                page += 1
            row, col = b1 & 0x0F, b1 >> 4
            if row == _SPECIAL_ROW and not b2 & 0x40:
                page = b2 & 0x1F
                continue
            out.append((page * 256 + col * 16, row, b2 & 0x7F))
        return out

    def pipe_exits(self, area: int) -> list[tuple[int, int]]:
        """(target area pointer, world index) of every pipe exit in an area's enemy data."""
        i = self._table_index(area, _ENEMY_ADDR_H_OFFSETS)
        addr = self.byte(_ENEMY_DATA_ADDR_LOW + i) | self.byte(_ENEMY_DATA_ADDR_HIGH + i) << 8
        out = []
        while (b1 := self.byte(addr)) != 0xFF:
            row = b1 & 0x0F
            if row == _POINTER_ROW:
                out.append((self.byte(addr + 1) & 0x7F, self.byte(addr + 2) >> 5))
                addr += 3
            else:
                addr += 2
        return out

    def world_areas(self, world: int) -> list[int]:
        """Area pointers of a world (1-8) in play order, intro scene included."""
        start = self.byte(_WORLD_ADDR_OFFSETS + world - 1)
        end = (
            self.byte(_WORLD_ADDR_OFFSETS + world)
            if world < 8
            else _ENEMY_ADDR_H_OFFSETS - _AREA_ADDR_OFFSETS
        )
        return list(self.bytes(_AREA_ADDR_OFFSETS + start, end - start))

    def goal_in(self, area: int) -> Goal | None:
        for x, row, b2 in self.area_objects(area):
            kind = b2 & 0x0F
            if row == _SPECIAL_ROW and (b2 & 0x30) == 0 and kind in (_FLAG_POLE, _AXE):
                return Goal(x, "flag" if kind == _FLAG_POLE else "axe", area & 0x7F)
        return None


@functools.cache
def _rom() -> _Rom:
    with open(rom_path(), "rb") as f:
        return _Rom(f.read())


def main_area(stage: str) -> tuple[int, int]:
    """(index in its world's area list, area pointer) of the area ``stage`` is played in.

    The index is what the game keeps in RAM 0x760 (AreaNumber) and bits 5-6 of the pointer
    are RAM 0x74E (AreaType). With an intro scene (a fifth area), stages 2-4 sit one further on.
    """
    world, number = world_stage(stage)
    areas = _rom().world_areas(world)
    index = number if len(areas) == 5 and number >= 2 else number - 1
    return index, areas[index]


@functools.cache
def stage_goal(stage: str) -> Goal:
    """The flag pole or axe ending ``stage`` ('W-S'), read from the ROM's level data."""
    rom = _rom()
    world, _ = world_stage(stage)
    _, main = main_area(stage)
    goal = rom.goal_in(main)
    if goal is None:
        # Underground and water stages: the goal is past the exit pipe of this world.
        for target, pipe_world in rom.pipe_exits(main):
            if pipe_world == world - 1 and (goal := rom.goal_in(target)) is not None:
                break
    if goal is None:  # pragma: no cover - every stage of the real ROM has one
        raise ValueError(f"no flag pole or axe found for stage {stage} in the level data")
    return goal


def stage_length(stage: str) -> int:
    """The x of ``stage``'s goal: the denominator of progress percentages."""
    return stage_goal(stage).x


def progress(stage: str, x_max: int, cleared: bool = False) -> float:
    """Share of ``stage`` covered, 0..1: ``x_max`` over the goal's x (1 when cleared)."""
    if cleared:
        return 1.0
    return min(1.0, max(0.0, x_max / stage_length(stage)))


def all_goals() -> dict[str, Goal]:
    """Every stage's goal, in game order."""
    return {s: stage_goal(s) for s in STAGES}
