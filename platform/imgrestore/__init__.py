"""imgrestore: a Ray distributed tuning platform for photo restoration (DACON 236420 format).

Stages, one sub-package each, in the order the data travels:
data -> embedding -> clustering -> models -> training -> tuning -> tracking -> submission.
"""

__version__ = "0.1.0"
