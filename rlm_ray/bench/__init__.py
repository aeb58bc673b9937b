"""rlm_ray.bench"""
