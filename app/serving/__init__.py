"""Serving tuned models: an LRU of loaded models, one dynamic batcher per model.

After text-embeddings-inference: requests are admitted into a bounded queue (or refused),
one asyncio task per model gathers them into padded batches under a size, wait and token
budget, and a single worker thread runs each forward under `torch.inference_mode()`.
Nothing here imports torch until the first model is loaded, so the API starts fast.
"""

from app.serving.predictor import ModelLoadError, ModelSpec, Predictor, QueueFull, TextScores
from core.serving.decode import decode_multi_label, decode_single_label

__all__ = [
    "ModelLoadError",
    "ModelSpec",
    "Predictor",
    "QueueFull",
    "TextScores",
    "decode_multi_label",
    "decode_single_label",
]
