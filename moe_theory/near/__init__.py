"""E5, near-coincident prompts: the Fisher-information mechanism (:mod:`moe_theory.near.mechanism`),
the configuration (:mod:`moe_theory.near.config`), the sweep of fits (:mod:`moe_theory.near.sweep`),
its result (:mod:`moe_theory.near.result`), analysis (:mod:`moe_theory.near.analysis`), files
(:mod:`moe_theory.near.output`) and printed report (:mod:`moe_theory.near.report`), and the
``--setting near`` command-line glue (:mod:`moe_theory.near.cli`)."""
