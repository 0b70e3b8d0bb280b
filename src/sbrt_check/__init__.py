"""sbrt-check: protocol compliance checking of SBRT plans exported as DICOM RT.

One thread per numerical library unless the user says otherwise: a check runs its own DVH
worker threads (and an audit or the node its own processes), so OpenBLAS's and OpenMP's
(pykdtree's) pools only add threads that spin against each other and against ours. Measured
on the two-lesion phantom, a warm check in one process took 1.6-1.8 s of CPU with both pools
at their defaults and 0.6 s with one thread each. Set here, before anything imports numpy
(the CLI, an audit worker, the node, or a program that imports sbrt_check first).
"""

import os

for _pool in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_pool, "1")

__version__ = "0.1.0"
