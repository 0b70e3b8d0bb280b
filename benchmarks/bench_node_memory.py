#!/usr/bin/env python
"""Peak memory of `sbrt-check listen` under the issue-18 attacks.

Why: a node that buffers what a client sends can be pushed out of memory by one client (the
issue measured 906 MB for one 300 MB object over a 10 MB limit, 1.8 GB for three, 788 MB for
a 400 MB first PDU). The node now refuses a PDU by its declared length and receives data sets
to disk; this prints its peak resident memory (VmHWM) after each attack:

1. a 400 MB A-ASSOCIATE-RQ length, then 400 MB of bytes offered;
2. a 300 MB RTDOSE (pynetdicom, sent from its file in chunks) to `--max-object-mb 10`;
3. three such objects at once.

Run from the repository root: `python benchmarks/bench_node_memory.py` (writes under /tmp).
"""

from __future__ import annotations

import re
import socket
import struct
import sys
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pydicom  # noqa: E402

from tests.fixtures import liver_plan  # noqa: E402
from tests.fixtures.dicom_net import NodeProcess, echoscu, pynetdicom_send  # noqa: E402
from tests.fixtures.dicom_writer import write_plan_folder  # noqa: E402


def peak_mb(process) -> int:
    return int(re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{process.pid}/status").read_text())[1]) // 1024


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench_node_memory_"))
    paths = write_plan_folder(root / "plan", replace(liver_plan.plan_spec("compliant"), patient_id="M", seed="m"))
    big = root / "big.dcm"
    dataset = pydicom.dcmread(paths["rtdose"])
    frames = 75  # 75 x 1024 x 1024 x 4 bytes = 300 MB
    dataset.Rows = dataset.Columns = 1024
    dataset.NumberOfFrames, dataset.GridFrameOffsetVector = frames, [float(i) for i in range(frames)]
    dataset.PixelData = np.zeros((frames, 1024, 1024), np.uint32).tobytes()
    dataset.save_as(big, enforce_file_format=True)
    del dataset
    node = NodeProcess(root / "out", "--max-object-mb", "10", "--jobs", "1")
    try:
        print(f"object {big.stat().st_size >> 20} MB; node at start: {peak_mb(node.process)} MB")
        with socket.create_connection(("127.0.0.1", node.port)) as raw:
            raw.sendall(struct.pack(">BBL", 0x01, 0, 400 << 20))
            try:
                for _ in range(400):
                    raw.sendall(b"\0" * (1 << 20))
            except OSError:
                pass
        print(f"after a 400 MB PDU: {peak_mb(node.process)} MB")
        pynetdicom_send(node.port, [big], as_is=True)
        print(f"after one 300 MB object: {peak_mb(node.process)} MB")
        senders = [threading.Thread(target=pynetdicom_send, args=(node.port, [big]), kwargs={"as_is": True})
                   for _ in range(3)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
        print(f"after three at once: {peak_mb(node.process)} MB; echo answered: {echoscu(node.port)}")
    finally:
        node.stop()


if __name__ == "__main__":
    main()
