"""Data stage: SeqIO sources, label corruption, the ledger overlay, vocabularies."""
