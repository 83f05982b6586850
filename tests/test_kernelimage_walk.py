"""The walk of the kernel text mapping (dfforensics/dump/kernelimage.py) on page tables
built in memory: permissions combine across levels as the MMU combines them (writable
only if every level allows it, executable only if none forbids it), 2 MiB pages count,
and what is not present is skipped."""

from dfforensics.dump.kernelimage import mapped_chunks

P, RW, PS, NX = 0x1, 0x2, 0x80, 1 << 63
MAP = 0xFFFFFFFF80000000  # __START_KERNEL_map: PML4 slot 511, PDPT slot 510


def tables() -> dict[int, list[int]]:
    pml4, pdpt, pd, pt = 0x1000, 0x2000, 0x3000, 0x4000
    t = {address: [0] * 512 for address in (pml4, pdpt, pd, pt)}
    t[pml4][511] = pdpt | P | RW
    t[pdpt][510] = pd | P | RW
    t[pd][8] = 0x1000000 | P | PS                     # 2 MiB at +16 MiB: read-only, executable (text)
    t[pd][11] = pt | P | RW | NX                      # NX at the PD: every page below is NX
    t[pt][0] = 0x1600000 | P | RW                     # writable at both levels: data
    t[pt][1] = 0x1601000 | P                          # read-only: rodata
    t[pt][2] = 0x1602000 | P | NX                     # read-only, NX twice
    t[pt][4] = 0x1604000 | RW                         # not present
    t[pd][12] = 0x1800000 | P | PS | NX | 0x1000      # 2 MiB, read-only, NX; bit 12 is PAT, not address
    return t


def test_permissions_combine_across_levels_and_huge_pages_count():
    built = tables()
    chunks = mapped_chunks(lambda physical: tuple(built[physical]), 0x1000, 4, MAP + (16 << 20), MAP + (32 << 20))
    assert chunks == [
        (MAP + (16 << 20), 2 << 20, 0x1000000, False, True),
        (MAP + (22 << 20), 0x1000, 0x1600000, True, False),
        (MAP + (22 << 20) + 0x1000, 0x1000, 0x1601000, False, False),
        (MAP + (22 << 20) + 0x2000, 0x1000, 0x1602000, False, False),
        (MAP + (24 << 20), 2 << 20, 0x1800000, False, False),
    ]


def test_a_walk_starting_inside_a_huge_page_begins_where_asked():
    built = tables()
    chunks = mapped_chunks(lambda physical: tuple(built[physical]), 0x1000, 4, MAP + (17 << 20), MAP + (18 << 20))
    assert chunks == [(MAP + (17 << 20), 1 << 20, 0x1100000, False, True)]
