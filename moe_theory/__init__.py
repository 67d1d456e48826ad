"""The theory half: simulate prefix tuning as a mixture of experts and measure its rates."""

from norga.extras import require_extra

require_extra("moe_theory", "theory",
              ("scipy", "numba", "joblib", "statsmodels", "tqdm", "threadpoolctl", "sklearn"))
