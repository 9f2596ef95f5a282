"""The benchmark driver's parts: building (build), processes and /proc accounting
(procs), and the tables (report).  ``bench/run.py`` ties them together."""
