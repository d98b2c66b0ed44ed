"""MOTFM DICOM node: receives studies from a PACS, runs the deploy app on each complete study and sends the new
series back to the PACS, losing nothing across crashes and restarts (see README.md)."""
