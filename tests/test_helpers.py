"""The test harness itself: waits end at their deadline, and a missing real tool fails under CI."""

from __future__ import annotations

import pytest

from tests.helpers import WatchedProcess, require_tool


def test_a_missing_tool_fails_under_ci_and_is_skipped_elsewhere(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no such tool"):
        require_tool(None, "no such tool")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="no such tool"):
        require_tool(None, "no such tool")
    assert require_tool("/bin/sh", "no such tool") == "/bin/sh"


def test_waiting_for_a_line_that_never_comes_ends_at_its_deadline(tmp_path):
    with WatchedProcess("listen", "--out", tmp_path, "--port", "0", "--jobs", "1") as node:
        assert "listening as" in node.wait_for_line("listening as")
        with pytest.raises(AssertionError, match="timed out after 1 s waiting for a line starting 'never'"):
            node.wait_for_line("never", deadline_s=1.0)
    assert node.process.poll() is not None  # leaving the block ended the node


def test_waiting_for_a_line_after_the_process_ended_says_so():
    with WatchedProcess("--version") as run, pytest.raises(AssertionError, match=r"ended \(exit .*\) without"):
        run.wait_for_line("never")
