"""kallsyms tables in bytes, laid out as scripts/kallsyms.c's write_src() writes them
(Linux 4.6 to 6.0 with CONFIG_KALLSYMS_BASE_RELATIVE, and kallsyms_addresses before):
every label .balign 8, names compressed with a 256-entry token table."""

import struct
from dataclasses import dataclass

ABSOLUTE_PERCPU_LIMIT = 1 << 31


@dataclass
class Built:
    blob: bytes
    labels: dict[str, int]  # label -> offset in blob


def _align(blob: bytearray) -> None:
    blob += b"\0" * (-len(blob) % 8)


def tokens_for(names: list[str]) -> list[str]:
    """256 tokens as scripts/kallsyms.c ends with them: every character a name uses in
    its own slot, the other slots filled with the commonest pairs (then filler pairs)."""
    table = [""] * 256
    used = sorted({c for name in names for c in name})
    for c in used:
        table[ord(c)] = c
    pairs: dict[str, int] = {}
    for name in names:
        for a, b in zip(name, name[1:]):
            pairs[a + b] = pairs.get(a + b, 0) + 1
    ranked = iter(sorted(pairs, key=lambda p: -pairs[p]))
    filler = iter(f"{a}{b}{c}" for a in "qxz" for b in "QXZ" for c in "0123456789" if a + b + c not in pairs)
    for slot in range(255, -1, -1):
        if not table[slot]:
            table[slot] = next(ranked, None) or next(filler)
    return table


def encode(text: str, tokens: list[str]) -> bytes:
    """Greedy longest-token encoding (any encoding decodes the same)."""
    out, position = [], 0
    by_length = sorted(range(256), key=lambda i: -len(tokens[i]))
    while position < len(text):
        slot = next(i for i in by_length if tokens[i] and text.startswith(tokens[i], position))
        out.append(slot)
        position += len(tokens[slot])
    return bytes(out)


def build(symbols: list[tuple[int, str, str]], layout: str = "offsets", relative_base: int = 0,
          absolute_percpu: bool = True, marker_width: int = 4) -> Built:
    """symbols: (address, nm type, name), sorted by address as scripts/kallsyms.c sorts them;
    markers .long (marker_width 4) or PTR (8, older kernels)."""
    blob = bytearray()
    labels = {}
    if layout == "addresses":
        labels["kallsyms_addresses"] = 0
        for address, _, _ in symbols:
            blob += struct.pack("<Q", address)
    else:
        labels["kallsyms_offsets"] = 0
        for address, _, _ in symbols:
            if absolute_percpu and address < ABSOLUTE_PERCPU_LIMIT:
                value = address
            elif absolute_percpu:
                value = (relative_base - address - 1) & 0xFFFFFFFF
            else:
                value = address - relative_base
            blob += struct.pack("<I", value)
        _align(blob)
        labels["kallsyms_relative_base"] = len(blob)
        blob += struct.pack("<Q", relative_base)
    _align(blob)
    labels["kallsyms_num_syms"] = len(blob)
    blob += struct.pack("<I", len(symbols))
    _align(blob)
    texts = [kind + name for _, kind, name in symbols]
    tokens = tokens_for(texts)
    labels["kallsyms_names"] = len(blob)
    markers = []
    for number, text in enumerate(texts):
        if number % 256 == 0:
            markers.append(len(blob) - labels["kallsyms_names"])
        encoded = encode(text, tokens)
        blob += bytes([len(encoded)]) + encoded
    _align(blob)
    labels["kallsyms_markers"] = len(blob)
    for marker in markers:
        blob += struct.pack("<I" if marker_width == 4 else "<Q", marker)
    _align(blob)
    labels["kallsyms_token_table"] = len(blob)
    index = []
    for token in tokens:
        index.append(len(blob) - labels["kallsyms_token_table"])
        blob += token.encode() + b"\0"
    _align(blob)
    labels["kallsyms_token_index"] = len(blob)
    blob += struct.pack("<256H", *index)
    _align(blob)
    return Built(bytes(blob), labels)


TEXT = 0xFFFFFFFF81000000


def kernel_symbols(count: int, percpu: int = 3) -> list[tuple[int, str, str]]:
    """A kernel-like table: per-CPU symbols at small addresses first, then _text, _stext,
    functions, data, and the names the checks look for."""
    symbols = [(0x1000 * i, "A", f"percpu_var_{i}") for i in range(percpu)]
    symbols += [(TEXT, "T", "_text"), (TEXT, "T", "_stext")]
    for i in range(count - percpu - 6):
        symbols.append((TEXT + 0x100 + 0x40 * i, "t" if i % 3 else "T", f"func_{i:05d}_do_work"))
    data = TEXT + 0x800000
    symbols += [(data, "R", "linux_banner"), (data + 0x100, "R", "__start_BTF"),
                (data + 0x20000, "D", "init_uts_ns"), (data + 0x30000, "D", "init_task")]
    return symbols


def kallsyms_compress(texts: list[bytes], type_apart: bool = False) -> tuple[list[bytes], list[bytes]]:
    """(tokens, each text's token numbers) as scripts/kallsyms.c's optimize_result() makes
    them: every character a text holds keeps its own number, then the free numbers from
    255 down each become the pair of tokens seen most often (counted as learn_symbol()
    counts, overlapping), replacing, left to right, every occurrence of that pair.
    ``type_apart``: the first character stays out of every pair (Zhen Lei's 2022 "don't
    compress symbol types")."""
    from collections import Counter

    tokens = [b""] * 256
    for c in {c for text in texts for c in text}:
        tokens[c] = bytes([c])
    codes = [bytes(text) for text in texts]
    skip = 1 if type_apart else 0
    for slot in range(255, -1, -1):
        if tokens[slot]:
            continue
        counts: Counter = Counter()
        for entry in codes:
            counts.update(zip(entry[skip:], entry[skip + 1:]))
        if not counts:
            break
        (first, second), profit = max(counts.items(), key=lambda item: (item[1], item[0]))
        if profit < 2:
            break
        tokens[slot] = tokens[first] + tokens[second]
        pair = bytes([first, second])
        codes = [entry[:skip] + entry[skip:].replace(pair, bytes([slot])) for entry in codes]
    return tokens, codes


def names_tables(texts: list[bytes], long_names: bool = True, seqs_gap: bool = False, type_apart: bool = False,
                 tokens_and_codes: "tuple[list[bytes], list[bytes]] | None" = None) -> dict:
    """kallsyms_names, kallsyms_markers (u32), [kallsyms_seqs_of_names], token table and
    token index, each .balign 8, as Linux 6.x lays them out from kallsyms_names on:
    {"data": bytes from kallsyms_names, "token_table": its offset, "token_index": ...}."""
    tokens, codes = tokens_and_codes or kallsyms_compress(texts, type_apart)
    blob = bytearray()
    markers = []
    for number, entry in enumerate(codes):
        if number % 256 == 0:
            markers.append(len(blob))
        length = len(entry)
        if long_names and length >= 0x80:
            blob += bytes([0x80 | (length & 0x7F), length >> 7])
        else:
            blob += bytes([length])
        blob += entry
    _align(blob)
    for marker in markers:
        blob += struct.pack("<I", marker)
    _align(blob)
    if seqs_gap:
        blob += b"\x5a" * (3 * len(codes))
        _align(blob)
    token_table = len(blob)
    index = []
    for token in tokens:
        index.append(len(blob) - token_table)
        blob += token + b"\0"
    _align(blob)
    token_index = len(blob)
    blob += struct.pack("<256H", *index)
    return {"data": bytes(blob), "token_table": token_table, "token_index": token_index, "codes": codes,
            "tokens": tokens}
