"""RAG: passages, prompt building, citation numbering and the answer pipeline (retrieval + the generator)."""
