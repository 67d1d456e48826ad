"""Running one continual-learning experiment: the task loop (:mod:`cl.run.engine`), the run
directory and its lifecycle (:mod:`cl.run.directory`), the per-task accuracy matrices
(:mod:`cl.run.accuracy_log`), atomic checksummed result files
(:mod:`cl.run.files`), multi-process training (:mod:`cl.run.distributed`), mixed precision
(:mod:`cl.run.precision`), seeding (:mod:`cl.run.seeding`) and ``env.json``
(:mod:`cl.run.environment`)."""
