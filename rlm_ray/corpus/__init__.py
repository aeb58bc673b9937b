"""rlm_ray.corpus"""
