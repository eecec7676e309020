"""RAG: passages, prompt building, citation numbering and the answer pipeline (retrieval + the generator).

request.py    AnswerRequest: an Ask/Chat question as the domain takes it, validated once, the defaults in one place
pipeline.py   RagPipeline.answer: retrieve -> build the prompt -> stream the generator as Context, TextDelta*, AnswerEnd;
              off_topic: declined before answering (no chunk close enough: CollectionConfig.min_similarity)
prompt.py     SYSTEM_PROMPT, build_prompt (the one check against the window), render_user_turn, conversation_query
passages.py   Passage, merge_hits (overlapping chunks -> one passage), numbered ([1], [2], ...), unwrap (hard wraps joined)
generator.py  load_generator: the AsyncLLM the server colocates, refused at start if it cannot render the prompt
sft_data.py   synthetic fine-tuning conversations in exactly this prompt format (python -m rag.sft_data)
sft_squad.py  the same from SQuAD questions people wrote, training half of its articles (python -m rag.sft_squad)

Transport-free: the service translates gRPC to these types and back; nothing here knows about protobuf.
"""
