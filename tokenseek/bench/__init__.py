"""Memory and speed benchmark (``tokenseek bench``) and the memory-budget planner (``tokenseek plan``).

- :mod:`tokenseek.bench.memory`: how one step's memory is measured (profiler, saved tensors, RSS).
- :mod:`tokenseek.bench.worker`: one configuration, measured in its own fresh process.
- :mod:`tokenseek.bench.run`: runs the workers and relates every figure to full-token training.
- :mod:`tokenseek.bench.report`: the Tab. 2-style Markdown tables and the Fig. 6 / Fig. 1(a) charts.
- :mod:`tokenseek.bench.planner`: predicts peak memory per ratio and picks one for a budget.
"""
