"""DVHs computed ahead on worker threads are the sequential ones, bit for bit, in the same report."""

from __future__ import annotations

import numpy as np
import pytest

from sbrt_check.errors import InputError
from sbrt_check.evaluate import Evaluator, Options
from sbrt_check.plandata import PlanData, load_plan
from sbrt_check.protocol import load_protocol


def _report(folder, threads: int):
    return Evaluator(load_plan(folder), load_protocol(None), Options(threads=threads)).report()


def test_threaded_check_gives_the_sequential_report(compliant):
    sequential, threaded = _report(compliant, 1), _report(compliant, 4)
    assert [(r.structure, r.metric, r.value, r.status, r.reason) for r in threaded.results] == [
        (r.structure, r.metric, r.value, r.status, r.reason) for r in sequential.results
    ]
    assert threaded.messages == sequential.messages
    assert threaded.dvhs.keys() == sequential.dvhs.keys()
    for name, dvh in sequential.dvhs.items():
        np.testing.assert_array_equal(threaded.dvhs[name].cumulative_cc, dvh.cumulative_cc)
        assert (threaded.dvhs[name].max_gy, threaded.dvhs[name].mean_gy) == (dvh.max_gy, dvh.mean_gy)


def test_a_worker_error_is_raised_where_the_dvh_is_asked_for(compliant, monkeypatch):
    plan = load_plan(compliant)
    keys = [f"#{roi.number}" for roi in plan.inputs.structure_set.rois[:3]]
    compute = PlanData._compute_dvh

    def failing(self, tokens):
        if tokens == (keys[1],):
            raise InputError(None, "damaged ROI")
        return compute(self, tokens)

    monkeypatch.setattr(PlanData, "_compute_dvh", failing)
    plan.prefetch([(k,) for k in keys], threads=2)
    assert plan.dvh((keys[0],)).volume_cc > 0
    for _ in range(2):  # every ask raises it, as a sequential run would
        with pytest.raises(InputError, match="damaged ROI"):
            plan.dvh((keys[1],))
    assert plan.dvh((keys[2],)).volume_cc > 0
