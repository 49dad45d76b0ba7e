"""misc/benchmark.py's parts: one module per part, the table that names them, the report.

``parts.PARTS`` is the table (name -> module, description). Each part's
module has ``measure(run)`` (its figures, merged into the JSON report),
``lines(report)`` (its lines of the table) and ``targets(report)`` (the
project's targets it checks); ``runner.measure`` runs the chosen parts,
``report`` formats the result. ``options`` and ``parts`` import no
TensorFlow: misc/benchmark.py imports them at module level, and CRF worker
processes re-import that script, as they do evaluate.py.
"""
