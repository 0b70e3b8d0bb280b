"""The statistician's list: one CSV row per patient, the latest submission (`trial.patient_lines`).

Every cell goes through `csv_cell`, like every CSV the tool writes: a patient ID or stratum
beginning with '=' must not run as a spreadsheet formula.
"""

from __future__ import annotations

import csv
import io

from ..safeio import csv_cell
from ..trial import PATIENT_COLUMNS, PatientLine


def render_patients_csv(lines: list[PatientLine]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(PATIENT_COLUMNS)
    for line in lines:
        cells = (line.patient_id, line.stratum, line.lesions, line.sum_diameters_cm, line.verdict, line.category,
                 line.review_decision, line.submitted_at, line.plan_uid, line.plan_label)
        writer.writerow(["" if cell is None else csv_cell(cell) for cell in cells])
    return buffer.getvalue()
