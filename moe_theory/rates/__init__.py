"""E1-E4 rate sweeps: configuration (:mod:`moe_theory.rates.config`), the sweep of fits
(:mod:`moe_theory.rates.sweep`), the analysis (:mod:`moe_theory.rates.analysis`) and the report
(:mod:`moe_theory.rates.report`)."""
