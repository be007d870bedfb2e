"""Checkpoint interop: OpenAI, open_clip and Hugging Face weights in and out."""
