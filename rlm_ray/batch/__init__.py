"""rlm_ray.batch"""
