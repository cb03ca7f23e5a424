"""What every tomeray job shares: resumable outputs with pinned manifests (``output``), one error
table (``errors_table``), Ray Data stages and actor planning (``graph``), the Ray session
(``ray_session``), config loading (``config``), atomic writes (``atomic``) and the command-line
runner (``runner``)."""
