"""Embedding models: the registry of aliases, where model files come from (cache, hub, pinned
wheels), the encoders and the direct reader of static model2vec folders."""
