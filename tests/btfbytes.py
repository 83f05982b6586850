"""A tiny BTF writer for tests: crafted blobs with exactly the records a test needs.

Follows include/uapi/linux/btf.h: a 24-byte header, then the type section, then the
string section (offsets relative to the end of the header).
"""

import struct

from dfforensics.inputs.btf import BTF_MAGIC, Kind


class BtfWriter:
    """Append records with :meth:`add` (ids count from 1), then take :meth:`blob`."""

    def __init__(self, order: str = "<") -> None:
        self.order = order
        self.types = b""
        self.strings = b"\0"
        self.count = 0

    def name(self, text: str) -> int:
        if not text:
            return 0
        offset = len(self.strings)
        self.strings += text.encode() + b"\0"
        return offset

    def words(self, *values: int) -> bytes:
        return struct.pack(self.order + "%dI" % len(values), *(v & 0xFFFFFFFF for v in values))

    def add(self, kind: Kind, name: str = "", size_or_type: int = 0, vlen: int = 0,
            kind_flag: bool = False, extra: bytes = b"") -> int:
        info = (int(kind_flag) << 31) | (int(kind) << 24) | vlen
        self.types += self.words(self.name(name), info, size_or_type) + extra
        self.count += 1
        return self.count

    def blob(self, version: int = 1, magic: int = BTF_MAGIC) -> bytes:
        header = struct.pack(self.order + "HBBIIIII", magic, version, 0, 24, 0, len(self.types),
                             len(self.types), len(self.strings))
        return header + self.types + self.strings


def every_kind(order: str = "<") -> tuple[bytes, dict[str, int]]:
    """A blob with one record of every kind; returns it and the ids by role."""
    w = BtfWriter(order)
    ids = {}
    ids["int"] = w.add(Kind.INT, "int", 4, extra=w.words((1 << 24) | 32))  # signed, 32 bits
    ids["uint"] = w.add(Kind.INT, "unsigned int", 4, extra=w.words(32))
    ids["ptr"] = w.add(Kind.PTR, "", ids["int"])
    ids["array"] = w.add(Kind.ARRAY, "", 0, extra=w.words(ids["int"], ids["uint"], 7))
    # struct s { int a; unsigned int b:3; unsigned int c:5; int *p; } with kind_flag bitfields.
    members = (w.words(w.name("a"), ids["int"], 0) + w.words(w.name("b"), ids["uint"], (3 << 24) | 32)
               + w.words(w.name("c"), ids["uint"], (5 << 24) | 35) + w.words(w.name("p"), ids["ptr"], 64))
    ids["struct"] = w.add(Kind.STRUCT, "s", 16, vlen=4, kind_flag=True, extra=members)
    ids["union"] = w.add(Kind.UNION, "u", 4, vlen=2, extra=w.words(w.name("i"), ids["int"], 0)
                         + w.words(w.name("j"), ids["uint"], 0))
    ids["enum"] = w.add(Kind.ENUM, "e", 4, vlen=2, kind_flag=True,
                        extra=w.words(w.name("E_NEG"), -1) + w.words(w.name("E_ONE"), 1))
    ids["fwd"] = w.add(Kind.FWD, "later", 0, kind_flag=True)  # a union declaration
    ids["typedef"] = w.add(Kind.TYPEDEF, "s_t", ids["struct"])
    ids["volatile"] = w.add(Kind.VOLATILE, "", ids["int"])
    ids["const"] = w.add(Kind.CONST, "", ids["volatile"])
    ids["restrict"] = w.add(Kind.RESTRICT, "", ids["ptr"])
    ids["proto"] = w.add(Kind.FUNC_PROTO, "", ids["int"], vlen=2,
                         extra=w.words(w.name("x"), ids["int"]) + w.words(0, 0))  # int (int x, ...)
    ids["func"] = w.add(Kind.FUNC, "f", ids["proto"], vlen=1)  # vlen: linkage (global)
    ids["var"] = w.add(Kind.VAR, "v", ids["int"], extra=w.words(1))
    ids["datasec"] = w.add(Kind.DATASEC, ".data..percpu", 4, vlen=1, extra=w.words(ids["var"], 0, 4))
    ids["float"] = w.add(Kind.FLOAT, "double", 8)
    ids["decl_tag"] = w.add(Kind.DECL_TAG, "tag", ids["struct"], extra=w.words(1))
    ids["type_tag"] = w.add(Kind.TYPE_TAG, "user", ids["int"])
    ids["enum64"] = w.add(Kind.ENUM64, "e64", 8, vlen=1,
                          extra=w.words(w.name("BIG"), 0x89ABCDEF, 0x01234567))
    return w.blob(), ids
