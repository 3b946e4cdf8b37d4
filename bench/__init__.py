"""Benchmarks of the gateway side by side with Orthanc and DCMTK ``storescp`` (issue 7).

Run ``make bench`` or ``python -m bench [--quick] [--only NAME] [--repeat N]``; results go to
``bench/results/latest.json`` and ``python -m bench.report`` renders ``docs/benchmarks.md``.
``python -m bench.profile`` samples the gateway with py-spy while it ingests over C-STORE.

Modules, one concept each:

* :mod:`.measure`: clocks, percentiles, medians, peak RSS from ``/proc``.
* :mod:`.machine`: what the numbers were measured on (CPU, RAM, kernel, versions).
* :mod:`.datasets`: deterministic generated data, made once and reused (``$BENCH_DATA``).
* :mod:`.systems`: the servers under comparison, started fresh on 127.0.0.1.
* :mod:`.scenarios`: one module per kind of workload (C-STORE, STOW-RS, bridge, QIDO, WADO).
* :mod:`.targets`: the issue's targets and whether a result meets them.
* :mod:`.runner`: interleaved repetitions, medians, ratios, the JSON result and the table.
* :mod:`.report`: ``docs/benchmarks.md`` from the JSON.
* :mod:`.profile`: where the gateway's time goes (py-spy samples grouped by cost).
"""
