"""DVHs computed ahead on worker threads are the sequential ones, bit for bit, in the same report."""

from __future__ import annotations

import threading

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


def test_the_checking_thread_computes_queued_dvhs_while_a_worker_has_the_one_it_asked_for(compliant, monkeypatch):
    """Deterministic, whatever the load: the worker's DVH waits (with a deadline) until the checking
    thread has computed the last queued one itself, which it can only do by taking it back from
    the queue; it asks for the worker's DVH only once the worker has started it."""
    plan = load_plan(compliant)
    keys = [(f"#{roi.number}",) for roi in plan.inputs.structure_set.rois[:3]]
    compute = PlanData._compute_dvh
    started, last_done = threading.Event(), threading.Event()
    computed_on: dict[tuple[str, ...], str] = {}

    def observed(self, tokens):
        if tokens == keys[0]:
            started.set()
            last_done.wait(timeout=30)  # a deadline: without the stealing, the test fails, never hangs
        result = compute(self, tokens)
        computed_on[tokens] = threading.current_thread().name
        if tokens == keys[2]:
            last_done.set()
        return result

    monkeypatch.setattr(PlanData, "_compute_dvh", observed)
    plan.prefetch(keys, threads=2)  # one worker beside this thread
    assert started.wait(timeout=30)
    assert plan.dvh(keys[0]).volume_cc > 0
    here = threading.current_thread().name
    assert computed_on[keys[2]] == here and computed_on[keys[0]] != here
    assert plan.dvh(keys[1]).volume_cc > 0 and plan.dvh(keys[2]).volume_cc > 0
