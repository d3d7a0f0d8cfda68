"""Each reader's relevance model: TF-IDF features, per-reader models, batch scoring, imports of likes."""
