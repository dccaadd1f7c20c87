"""Building and changing indexes: the build stages and their configs, the FAISS index plan,
training and filling, search tuning, FAISS search primitives, updates and distributed builds."""
