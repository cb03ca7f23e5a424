"""Scene reconstruction: the job (``job``: ``run_reconstruct``), the output on disk (``layout``),
reading results back (``results``: ``load_scene``, ``list_scenes``, ``to_open3d``), PLY / COLMAP
exports (``exports``), evaluation against references (``evaluation``) and the command line (``cli``).

    from tomeray.pipeline.reconstruction.results import load_scene
    cams, pts = load_scene("recon", "kitchen")
"""
