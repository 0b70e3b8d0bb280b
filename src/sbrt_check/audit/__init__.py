"""Audit a whole archive: find every plan wherever its files lie, check each, one row per plan.

Why a package of its own: the QA office audits every enrolled patient's plan, exported by
different people into trees of any shape. One module per job: `discovery` (finding the plans,
input hashes, shards), `run` (checking them, in the worker pool `listen` shares), `rows` (one
flat row per plan), `resume` (an earlier audit's rows that still hold), `results_store` (the
store adapter, also used by `check --db` and `listen --db`), `anonymize` and `writers` (CSV,
JSON). Pure logic: the CLI (`cli/audit.py`) prints the progress and the table and decides the
exit code.
"""
