"""Custom code of the MOTFM bundle, imported by its configs as ``scripts.*``."""
