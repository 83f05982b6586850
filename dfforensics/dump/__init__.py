"""Reading a dump (or live kernel) with drgn: opening it, finding each #DF,
classifying RSPs, reading stacks, the guest's context and the sweep. This layer
observes and hands typed values to :mod:`dfforensics.core.verdict`; it never judges."""
