"""Input files as files: what a dump or vmlinux is by its bytes (compression,
ELF/kdump/flattened magic, kdump headers, VMCOREINFO, kernel identity),
decompression into the cache, and pyelftools readings. No drgn: triage's parent
process plans with it."""
