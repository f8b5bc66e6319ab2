"""Index building: recipes, FAISS construction, tuning."""
