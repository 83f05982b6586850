"""The pure core: x86 and per-version kernel facts, frame decoding, the verdict
rules (the one judge), the result model and its renderings. Imports no drgn and
nothing from the other layers."""
