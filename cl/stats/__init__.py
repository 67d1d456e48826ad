"""Class statistics of frozen features for head alignment: one Gaussian per class
(:mod:`cl.stats.gaussian`) or HiDe-Prompt's multi-centroid variant (:mod:`cl.stats.centroids`)."""
