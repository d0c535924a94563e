"""Data stage: manifests, corpus preparation, audio reading, crops, synthetic speech."""
