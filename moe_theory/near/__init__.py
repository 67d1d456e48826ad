"""E5, near-coincident prompts: the Fisher-information mechanism (:mod:`moe_theory.near.mechanism`),
the sweep of fits (:mod:`moe_theory.near.sweep`), its printed report (:mod:`moe_theory.near.report`)
and the ``--setting near`` command-line glue (:mod:`moe_theory.near.cli`)."""
