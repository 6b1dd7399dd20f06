"""Embeddings of cells (or whole fields) from a backbone: crop, map stains to slots, normalise, run.

Crops for the next batch are prepared in a background thread while the model runs the current one.
Reduced precision (bf16/fp16 autocast) is used only after the first batch shows it agrees with fp32.
"""

from ._embed import embed_cells, embed_field
from ._embedder import MIN_COSINE, Embedder, Prefetcher, PreparedBatch, join_views, pool_tokens, run_batches
from ._settings import EMBEDDING_TYPES, EmbedSettings, Embeddings
from ._signature import CACHE_FORMAT, canonical, embedding_signature, signature, signature_key

__all__ = [
    "CACHE_FORMAT", "EMBEDDING_TYPES", "MIN_COSINE", "EmbedSettings", "Embedder", "Embeddings", "Prefetcher",
    "PreparedBatch", "canonical", "embed_cells", "embed_field", "embedding_signature", "join_views", "pool_tokens",
    "run_batches", "signature", "signature_key",
]
