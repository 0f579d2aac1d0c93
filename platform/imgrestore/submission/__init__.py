"""Restore a test set into a checked submission.zip."""
