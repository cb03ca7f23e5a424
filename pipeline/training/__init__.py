"""Fine-tuning TempMe's trainable parts and evaluating retrieval: the training job (``job``:
``run_train``, run by Ray Train workers in ``loop``), its data (``data``, ``msrvtt``), its output
(``layout``), retrieval evaluation (``evaluation``: ``run_eval_retrieval``) and their command lines
(``cli``, ``eval_cli``). Uses the video product's pieces (decoding, the embedding graph); the video
product never imports this one.

    from tomeray.pipeline.training.job import run_train
    run_train("pairs.csv", "runs/ft", ["model.pretrained=openai"])
"""
