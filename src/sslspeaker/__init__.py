"""sslspeaker: self-supervised speaker embeddings and speaker verification."""

__version__ = "0.1.0"
