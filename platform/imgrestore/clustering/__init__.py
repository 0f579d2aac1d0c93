"""Scene clustering of image embeddings (UMAP + HDBSCAN) and leakage-free group folds."""
from imgrestore.clustering.scene_clusters import (  # noqa: F401
    SceneClusterer,
    cluster_summary,
    cuml_available,
    resolve_backend,
)
from imgrestore.clustering.placement import plan_clustering, run_clustering  # noqa: F401
from imgrestore.clustering.split import check_no_leak, cluster_groups, group_folds  # noqa: F401
