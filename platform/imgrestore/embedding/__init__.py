"""Image embeddings for scene clustering: embedders (CLIP, offline EfficientNet-Lite0) and Ray Data batch inference."""
from imgrestore.embedding.embedders import (  # noqa: F401
    CLIPEmbedder,
    EfficientNetLite0Embedder,
    Embedder,
    EmbedderError,
    create_embedder,
    create_preparer,
    normalize_spec,
    random_clip_embedder,
)
