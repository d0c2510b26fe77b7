"""Reports of finished runs: the HCPO and MAGPO papers' evaluation protocols (ALGORITHMS.md section 6).

``report(paths, out_dir)`` reads run folders, a W&B export (:mod:`hcmarl.report.runs`) or published results
in marl-eval's JSON layout (:mod:`hcmarl.report.marl_eval`, which also writes hcmarl runs in it), computes
the statistics (:mod:`~hcmarl.report.stats`), tables (:mod:`~hcmarl.report.tables`) and figures
(:mod:`~hcmarl.report.plots`), and writes one Markdown page (:mod:`~hcmarl.report.page`).
No Lightning inside; the figures need matplotlib (``pip install 'hcmarl[plots]'``).
"""

from hcmarl.report.build import report

__all__ = ["report"]
