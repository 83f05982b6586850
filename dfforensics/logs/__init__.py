"""Console logs: parsing #DF reports and stack words quoted in text, and the
log-only analysis. Pure: no drgn; built on :mod:`dfforensics.core`."""
