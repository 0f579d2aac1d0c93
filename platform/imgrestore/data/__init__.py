"""DACON-format data: reading, validation, the damage model, mask recovery and dataset building."""
