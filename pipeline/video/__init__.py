"""Video retrieval: indexing (``job``: ``run_index``; ``merge``: ``merge_indexes``), the index on disk
(``layout``, ``ids``, ``faiss_index``), search (``search``: ``VideoSearcher``), their command lines
(``cli``, ``search_cli``) and the quick-start demo (``demo``).

    from tomeray.pipeline.video.job import run_index
    from tomeray.pipeline.video.search import VideoSearcher
    run_index(["videos/"], "idx", ["model.pretrained=none"])
    VideoSearcher("idx").search("people walking", k=5)
"""
